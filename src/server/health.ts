// Liveness that asks the model, not the HTTP stack: `model.health()` completes a forward step
// within a deadline (or sees the running generation complete one), so a wedged GPU fails the
// probe while HTTP still answers.
//
// A probe that timed out is still queued in the engine. Probing again before it finishes would
// pile up one more stuck probe per request, so concurrent checks share one probe, and after a
// failure the next probe waits until the engine completes some step; until then the answer is
// "still failing", at once.

import type { HealthReport, ServedModel } from './served-model.ts';

function completedSteps(stats: object): number | undefined {
  const steps = (stats as { steps?: unknown }).steps;
  return typeof steps === 'number' ? steps : undefined;
}

export class HealthMonitor {
  private probe: Promise<HealthReport> | undefined;
  private lastFailure: { steps: number | undefined; at: number; detail: string } | undefined;

  constructor(private readonly model: Pick<ServedModel, 'health' | 'stats'>, readonly deadlineMs: number) {}

  check(): Promise<HealthReport> {
    this.probe ??= this.run().finally(() => (this.probe = undefined));
    return this.probe;
  }

  private async run(): Promise<HealthReport> {
    const steps = completedSteps(this.model.stats());
    const failure = this.lastFailure;
    if (failure && steps !== undefined && steps === failure.steps) {
      const ago = (performance.now() - failure.at).toFixed(0);
      return { ok: false, detail: `${failure.detail}; no forward step has completed since (${ago} ms ago)` };
    }
    let report: HealthReport;
    try {
      report = await this.model.health(this.deadlineMs);
    } catch (error) {
      report = { ok: false, detail: `health probe failed: ${(error as Error).message}` };
    }
    this.lastFailure = report.ok ? undefined : { steps, at: performance.now(), detail: report.detail };
    return report;
  }
}
