// `--shard auto`: which tp × pp split to run on these devices, decided from measurements taken on
// them. Fit first: every split is planned (planShards) and those that do not fit are set aside
// with their reason, before anything is measured. Then speed: the round trip of one collective
// and one decode step's kernels are measured (measure.ts) and choose.ts predicts each fitting
// split's decode step from them and takes the fastest.
//
// Only what the fitting splits need is measured: all-reduces among tp workers for each tensor-
// parallel width that fits, a hand-off when a pipeline split fits, and always the decode step.
// Collectives carry one token's hidden state (dim f32 values), as they do when decoding.

import type { GpuOptions } from '../gpu/device.ts';
import type { LlamaConfig } from '../model/config.ts';
import type { GGUFFile } from '../model/gguf.ts';
import { chooseSplit, planCandidates, type SplitChoice, type SplitMeasurements } from './choose.ts';
import { measureDecodeStep, measureInterconnect, type DecodeStepMeasurement, type InterconnectMeasurement } from './measure.ts';
import { describeShardDevices, distinctAdapters } from './devices.ts';
import { formatBytes, type ShardPlan } from './plan.ts';
import type { ShardableSource } from '../model/open-model.ts';

export interface AutoSplitOptions {
  /** What the measuring worker opens, as for loadModel: a path, URL, Blob/File or bytes. */
  source: ShardableSource;
  /** Devices to split over (tp × pp = deviceCount). */
  deviceCount: number;
  /** GPU options per device (one entry: the same for all). Default: the default adapter for all. */
  devices?: GpuOptions[];
  contextLength: number;
  maxBatchTokens: number;
  /** Sequences generating at once and the KV positions they share (as loadModel's; they size the KV cache). */
  maxSequences?: number;
  kvCacheTokens?: number;
  /** Per-device memory budget for the planner (WebGPU does not report device memory). */
  gpuMemoryBytes?: number;
  /** Split weights for unequal devices, one per shard (as loadModel's shardWeights). */
  shardWeights?: number[];
  /**
   * Physical GPUs behind the devices: shards on one GPU share its bandwidth. Default: one per
   * distinct entry of `devices`, since equal options open devices on the same adapter.
   */
  physicalGpus?: number;
  /** Timed collectives per group size. Default 40. */
  iterations?: number;
  /** Timed decode steps on one device. Default 12. */
  decodeSteps?: number;
  /** Most bytes of the model the decode-step probe loads (see measureDecodeStep). */
  maxProbeBytes?: number;
  /** Measurements to use instead of measuring (e.g. taken earlier on the same machine). */
  measurements?: SplitMeasurements;
  /** Progress notes for a user ("measuring the all-reduce on 2 devices..."). */
  onStatus?: (message: string) => void;
}

/** The chosen split (see SplitChoice; its reason also says what was measured), with its plan and the measurements. */
export interface AutoSplit extends SplitChoice {
  /** The chosen split's plan (pass tp and pp to loadModel; it plans the same again). */
  plan: ShardPlan;
  /** What choose.ts was given. */
  measurements: SplitMeasurements;
  /** The raw measurements (absent when `measurements` was passed in). */
  measured?: { interconnect?: InterconnectMeasurement; decodeStep: DecodeStepMeasurement };
}

/**
 * What choose.ts needs, from raw measurements: the p50 round trip of an all-reduce per group size
 * and of a hand-off at `bytes` per collective, and the decode step's kernel time on one device.
 */
export function splitMeasurementsFrom(
  interconnect: InterconnectMeasurement | undefined,
  decodeStep: DecodeStepMeasurement,
  bytes: number,
  physicalGpus: number,
): SplitMeasurements {
  const atSize = interconnect?.measurements.filter((m) => m.bytes === bytes) ?? [];
  const allReduces = atSize.filter((m) => m.kind === 'allReduceSum');
  const handOff = atSize.find((m) => m.kind === 'handOff');
  const handoffMs = handOff?.roundTripMs.p50;
  return {
    // With no tensor-parallel split to predict, choose.ts never asks for an all-reduce.
    roundTripMs: allReduces.length > 0 ? Object.fromEntries(allReduces.map((m) => [m.workers, m.roundTripMs.p50])) : (handoffMs ?? 0),
    handoffMs,
    stepKernelMs: decodeStep.stepMs,
    physicalGpus,
  };
}

const ms = (x: number) => `${x.toFixed(x < 1 ? 3 : 2)} ms`;

/** One line on what was measured, for the reason. */
function describeMeasured(
  config: LlamaConfig,
  measured: { interconnect?: InterconnectMeasurement; decodeStep: DecodeStepMeasurement },
  bytes: number,
  deviceCount: number,
  physicalGpus: number,
): string {
  const { interconnect, decodeStep } = measured;
  const parts: string[] = [];
  const atSize = interconnect?.measurements.filter((m) => m.bytes === bytes) ?? [];
  const allReduces = atSize.filter((m) => m.kind === 'allReduceSum');
  if (allReduces.length > 0) {
    parts.push(
      `all-reduce of ${formatBytes(bytes)} (one token's hidden state) p50 ` +
        allReduces.map((m) => `${ms(m.roundTripMs.p50)} on ${m.workers} devices`).join(', '),
    );
  }
  const handOff = atSize.find((m) => m.kind === 'handOff');
  if (handOff) parts.push(`hand-off p50 ${ms(handOff.roundTripMs.p50)}`);
  const layers =
    decodeStep.layersTimed === config.nLayers
      ? `all ${config.nLayers} layers`
      : `first ${decodeStep.layersTimed} of ${config.nLayers} layers, scaled by weight bytes`;
  parts.push(`decode step on one device ${ms(decodeStep.stepMs)} (${layers})`);
  const sharing = physicalGpus < deviceCount ? ` (${deviceCount} devices on ${physicalGpus} GPU${physicalGpus > 1 ? 's' : ''})` : '';
  return `measured on ${decodeStep.adapter}${sharing}: ${parts.join('; ')}`;
}

/**
 * Picks tp × pp for `deviceCount` devices: plans every split (fit first), measures the round
 * trips and the decode step those that fit need, and predicts each one's decode speed
 * (choose.ts). Throws ShardPlanError with every split's reason when none fits.
 */
export async function chooseShardSplit(file: GGUFFile, config: LlamaConfig, options: AutoSplitOptions): Promise<AutoSplit> {
  const { deviceCount } = options;
  if (!Number.isInteger(deviceCount) || deviceCount < 1) throw new RangeError(`deviceCount must be a positive integer; got ${deviceCount}`);
  const given = options.devices ?? [];
  if (given.length > 1 && given.length !== deviceCount) {
    throw new RangeError(`${given.length} device options given for ${deviceCount} devices: give one per device, or one for all`);
  }
  const gpus = Array.from({ length: deviceCount }, (_, i) => given[i] ?? given[0] ?? {});
  const physicalGpus = options.physicalGpus ?? distinctAdapters(gpus);

  const descriptions = await describeShardDevices(gpus, options.gpuMemoryBytes);
  const candidates = planCandidates(file, config, {
    contextLength: options.contextLength,
    maxSequences: options.maxSequences,
    kvCacheTokens: options.kvCacheTokens,
    maxBatchTokens: options.maxBatchTokens,
    devices: descriptions,
    weights: options.shardWeights,
  });
  const fitting = candidates.filter((c) => c.plan);
  if (fitting.length === 0) {
    // Nothing to measure: chooseSplit throws ShardPlanError with every candidate's reason, and
    // does so before it uses any measurement, so placeholders are enough.
    chooseSplit({ deviceCount, config, candidates, measurements: { roundTripMs: 0, stepKernelMs: 0 } });
  }

  let measurements: SplitMeasurements | undefined = options.measurements && { physicalGpus, ...options.measurements };
  let measured: AutoSplit['measured'];
  let measuredLine = 'measurements given, not measured';
  if (!measurements) {
    const bytes = config.dim * 4;
    const groupSizes = [...new Set(fitting.filter((c) => c.tp > 1).map((c) => c.tp))];
    if (fitting.some((c) => c.pp > 1)) groupSizes.push(1);
    groupSizes.sort((a, b) => a - b);
    let interconnect: InterconnectMeasurement | undefined;
    if (groupSizes.length > 0) {
      const what = groupSizes.map((g) => (g === 1 ? 'a hand-off' : `an all-reduce among ${g} devices`));
      options.onStatus?.(`measuring ${what.join(' and ')} of ${formatBytes(bytes)}...`);
      interconnect = await measureInterconnect({
        devices: gpus.slice(0, Math.max(...groupSizes)),
        bytes,
        iterations: options.iterations ?? 40,
        groupSizes,
      });
    }
    options.onStatus?.('measuring a decode step on one device...');
    const decodeStep = await measureDecodeStep({
      source: options.source,
      file,
      config,
      gpu: gpus[0],
      steps: options.decodeSteps,
      maxProbeBytes: options.maxProbeBytes,
    });
    measured = { interconnect, decodeStep };
    measurements = splitMeasurementsFrom(interconnect, decodeStep, bytes, physicalGpus);
    measuredLine = describeMeasured(config, measured, bytes, deviceCount, physicalGpus);
  }

  const choice = chooseSplit({ deviceCount, config, measurements, candidates });
  return {
    tp: choice.tp,
    pp: choice.pp,
    predictedTokensPerSecond: choice.predictedTokensPerSecond,
    predictedStepMs: choice.predictedStepMs,
    reason: `${measuredLine}\n${choice.reason}`,
    candidates: choice.candidates,
    plan: candidates.find((c) => c.tp === choice.tp && c.pp === choice.pp)!.plan!,
    measurements,
    measured,
  };
}
