// The Containerfile and the Kubernetes manifests, checked offline: every manifest against the
// Kubernetes OpenAPI schemas (npm kubernetes-models, Kubernetes 1.x core/apps/autoscaling, and
// @kubernetes-models/gateway-api for the HTTPRoute; the Inference Extension's InferencePool has
// no published model package, so its fields are checked by hand below), and beyond the schemas
// what only webshard knows: probe paths are server routes, probe and Service ports are the
// container's, the GPU limit is tp × pp, the grace period outlasts --shutdown-grace, and the
// container starts the server itself.

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { InferenceServer } from '../src/server/server.ts';
import { HTTPRoute } from '@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1';
import { Deployment } from 'kubernetes-models/apps/v1';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2';
import { PersistentVolumeClaim, Service } from 'kubernetes-models/v1';
import { parseAllDocuments } from 'yaml';

/** Every YAML document of a file, as plain data (a syntax error fails the test, naming the file). */
function parseYamlDocuments(text: string, file: string): unknown[] {
  return parseAllDocuments(text).map((document) => {
    if (document.errors.length > 0) throw new Error(`${file}: ${document.errors.map((e) => e.message).join('; ')}`);
    return document.toJS();
  });
}

/** The schema-checked model class of each kind (validate() throws naming the field). */
const SCHEMAS: Record<string, new (data: never) => { validate(): void }> = {
  Deployment,
  Service,
  PersistentVolumeClaim,
  HorizontalPodAutoscaler,
  HTTPRoute,
};

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const kubernetes = join(root, 'deploy/kubernetes');

type Manifest = { apiVersion: string; kind: string; metadata: { name: string; labels?: Record<string, string> }; spec: any }; // eslint-disable-line @typescript-eslint/no-explicit-any

/** Every resource a kustomization lists, recursively (directories are kustomizations themselves). */
function kustomize(dir: string): Manifest[] {
  const [kustomization] = parseYamlDocuments(readFileSync(join(dir, 'kustomization.yaml'), 'utf8'), join(dir, 'kustomization.yaml')) as Array<{ apiVersion: string; kind: string; resources: string[] }>;
  expect(kustomization).toMatchObject({ apiVersion: 'kustomize.config.k8s.io/v1beta1', kind: 'Kustomization' });
  return kustomization!.resources.flatMap((resource) => {
    const path = join(dir, resource);
    expect(existsSync(path), `${path} (listed in ${dir}/kustomization.yaml)`).toBe(true);
    if (!path.endsWith('.yaml')) return kustomize(path);
    return parseYamlDocuments(readFileSync(path, 'utf8'), path) as Manifest[];
  });
}

/** The apiVersion each kind is served under (Kubernetes 1.29+, Gateway API v1, Inference Extension v1). */
const API_VERSIONS: Record<string, string> = {
  Deployment: 'apps/v1',
  Service: 'v1',
  PersistentVolumeClaim: 'v1',
  HorizontalPodAutoscaler: 'autoscaling/v2',
  HTTPRoute: 'gateway.networking.k8s.io/v1',
  InferencePool: 'inference.networking.k8s.io/v1',
};

const base = kustomize(kubernetes);
const withGateway = kustomize(join(kubernetes, 'gateway'));
const one = (kind: string, manifests = withGateway) => {
  const found = manifests.filter((m) => m.kind === kind);
  expect(found, kind).toHaveLength(1);
  return found[0]!;
};
const deployment = one('Deployment');
const pod = deployment.spec.template.spec;
const container = pod.containers[0];
const argument = (name: string) => {
  const at = (container.args as string[]).indexOf(`--${name}`);
  return at < 0 ? undefined : (container.args as string[])[at + 1];
};

/** What the server answers on `path` before a model is loaded: 404 only for routes it does not have. */
async function serverRoute(path: string): Promise<number> {
  const server = new InferenceServer({ modelName: 'm' });
  return (await server.handle(new Request(`http://127.0.0.1${path}`))).status;
}

describe('Kubernetes manifests (deploy/kubernetes)', () => {
  it('kubectl apply -k: the base has no custom resources; the gateway overlay adds the InferencePool and the HTTPRoute', () => {
    expect(base.map((m) => m.kind).sort()).toEqual(['Deployment', 'HorizontalPodAutoscaler', 'PersistentVolumeClaim', 'Service']);
    expect(withGateway.map((m) => m.kind).sort()).toEqual([...base.map((m) => m.kind), 'HTTPRoute', 'InferencePool'].sort());
  });

  it('every manifest of a Kubernetes or Gateway API kind validates against its OpenAPI schema', () => {
    for (const m of withGateway.filter((m) => m.kind !== 'InferencePool')) {
      const Schema = SCHEMAS[m.kind];
      expect(Schema, `a schema for ${m.kind}`).toBeDefined();
      expect(() => new Schema!(m as never).validate(), `${m.kind} ${m.metadata.name}`).not.toThrow();
    }
    // The check can fail: a replica count that is not an integer is refused.
    expect(() => new Deployment({ ...deployment, spec: { ...deployment.spec, replicas: 'two' } } as never).validate()).toThrow(/replicas must be integer/);
  });

  it('every manifest has its kind\'s apiVersion, a DNS-1123 name and a spec', () => {
    for (const m of withGateway) {
      expect(m.apiVersion, m.kind).toBe(API_VERSIONS[m.kind]);
      expect(m.metadata.name).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
      expect(typeof m.spec).toBe('object');
    }
  });

  it('the Deployment: selector matches the pod labels, one container with an image, args and a named port', () => {
    expect(deployment.spec.selector.matchLabels).toEqual(expect.objectContaining(deployment.spec.template.metadata.labels));
    expect(pod.containers).toHaveLength(1);
    expect(container.image).toMatch(/^[\w.\-/:]+$/);
    expect(container.ports).toEqual([{ name: 'http', containerPort: Number(argument('port') ?? 8080), protocol: 'TCP' }]);
  });

  it('probes: /ready for startup and readiness, /health for liveness, on the container port, and they are server routes', async () => {
    const probes = { startupProbe: '/ready', readinessProbe: '/ready', livenessProbe: '/health' } as const;
    for (const [probe, path] of Object.entries(probes)) {
      expect(container[probe].httpGet, probe).toEqual({ path, port: 'http' });
      expect(container.ports.map((p: { name: string }) => p.name)).toContain(container[probe].httpGet.port);
      expect(await serverRoute(path), `${path} is a route of the server (503 before the model loads)`).toBe(503);
    }
    expect(await serverRoute('/no-such-route')).toBe(404);
    // Long enough to load a 70B-class file: at least 20 minutes before the kubelet gives up.
    expect(container.startupProbe.periodSeconds * container.startupProbe.failureThreshold).toBeGreaterThanOrEqual(1200);
    // /health runs a forward step within --health-deadline-ms (default 5 s): the probe waits longer.
    expect(container.livenessProbe.timeoutSeconds * 1000).toBeGreaterThan(Number(argument('health-deadline-ms') ?? 5000));
  });

  it('one GPU per shard (tp × pp), the model read-only from a volume, a grace period above --shutdown-grace', () => {
    const shards = Number(argument('tp') ?? 1) * Number(argument('pp') ?? 1);
    expect(container.resources.limits['nvidia.com/gpu']).toBe(String(shards));
    const model = argument('model')!;
    const mount = (container.volumeMounts as Array<{ name: string; mountPath: string; readOnly?: boolean }>).find((m) => model.startsWith(`${m.mountPath}/`))!;
    expect(mount.readOnly).toBe(true);
    const volume = (pod.volumes as Array<{ name: string; persistentVolumeClaim?: { claimName: string; readOnly?: boolean } }>).find((v) => v.name === mount.name)!;
    expect(volume.persistentVolumeClaim?.claimName).toBe(one('PersistentVolumeClaim').metadata.name);
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(Number(argument('shutdown-grace') ?? 10));
    expect(pod.securityContext.runAsNonRoot).toBe(true);
  });

  it('the Service, the autoscaler, the InferencePool and the HTTPRoute point at the Deployment and its port', () => {
    const labels = deployment.spec.template.metadata.labels;
    const service = one('Service');
    expect(labels).toEqual(expect.objectContaining(service.spec.selector));
    expect(service.spec.ports.map((p: { targetPort: string }) => p.targetPort)).toEqual(['http']);

    const hpa = one('HorizontalPodAutoscaler');
    expect(hpa.spec.scaleTargetRef).toEqual({ apiVersion: 'apps/v1', kind: 'Deployment', name: deployment.metadata.name });
    expect(hpa.spec.minReplicas).toBeLessThanOrEqual(hpa.spec.maxReplicas);
    expect(hpa.spec.metrics[0].pods.metric.name).toBe('webshard_queue_depth');

    const pool = one('InferencePool');
    expect(labels).toEqual(expect.objectContaining(pool.spec.selector.matchLabels));
    expect(pool.spec.targetPorts).toEqual([{ number: container.ports[0].containerPort }]);
    expect(pool.spec.endpointPickerRef.name).toMatch(/\S/);

    const route = one('HTTPRoute');
    const backends = route.spec.rules.flatMap((rule: { backendRefs: unknown[] }) => rule.backendRefs);
    expect(backends).toEqual([{ group: 'inference.networking.k8s.io', kind: 'InferencePool', name: pool.metadata.name }]);
  });

  it('the metrics the HPA and the endpoint picker read are exported', async () => {
    const server = new InferenceServer({ modelName: 'm' });
    const metrics = await (await server.handle(new Request('http://127.0.0.1/metrics'))).text();
    for (const name of ['webshard_queue_depth', 'vllm:num_requests_waiting', 'vllm:num_requests_running', 'vllm:kv_cache_usage_perc', 'vllm:cache_config_info']) {
      expect(metrics).toMatch(new RegExp(`^# TYPE ${name} gauge$`, 'm'));
    }
  });
});

describe('Containerfile', () => {
  const containerfile = readFileSync(join(root, 'Containerfile'), 'utf8');
  const instruction = (name: string) => [...containerfile.matchAll(new RegExp(`^${name} (.+)$`, 'gm'))].map((m) => m[1]!);

  it('starts the server itself, in exec form, with the flags of the serve task', () => {
    const [entrypoint] = instruction('ENTRYPOINT');
    const command = JSON.parse(entrypoint!) as string[];
    const serveTask = (JSON.parse(readFileSync(join(root, 'deno.json'), 'utf8')) as { tasks: Record<string, string> }).tasks.serve!.split(/\s+/);
    expect(command[0]).toMatch(/\/deno$/); // no launcher, no shell: SIGTERM reaches the server
    expect(command.slice(1, serveTask.length)).toEqual(serveTask.slice(1));
    expect(command.slice(serveTask.length)).toEqual(['--host', '0.0.0.0', '--port', String(container.ports[0].containerPort)]);
    expect(instruction('EXPOSE')).toEqual([String(container.ports[0].containerPort)]);
  });

  it('Debian, lavapipe and the NVIDIA ICD, non-root, the model as a volume', () => {
    expect(instruction('FROM')[0]).toMatch(/^debian:/);
    expect(containerfile).toMatch(/mesa-vulkan-drivers/);
    expect(containerfile).toMatch(/nvidia_icd\.json/);
    const users = instruction('USER');
    expect(users.at(-1)).not.toMatch(/^(root|0)$/);
    expect(instruction('VOLUME')).toEqual(['["/models"]']);
    expect(containerfile).toMatch(/runAsUser|--uid 10001/);
    expect(pod.securityContext.runAsUser).toBe(10001);
  });
});
