// Validates the kustomize base deploy/k8s against the Kubernetes schemas
// (npm: kubernetes-models, @kubernetes-models/prometheus-operator for the
// ServiceMonitor and PodMonitor), then checks what schemas cannot: the
// kustomization lists every manifest and each exists, the objects refer to
// each other correctly (Service/StatefulSet/monitors selectors, ConfigMap,
// ports), probes and resource requests are set, the worker Job's size
// equals EFFADAM_WORKERS, and every $(VAR) in args is defined.
// Usage: node validate_k8s.cjs DIR   (NODE_PATH=the npm prefix's node_modules)
"use strict";
const fs = require("fs");
const path = require("path");
const YAML = require("yaml");

const dir = process.argv[2];
const failures = [];
function check(cond, what) {
  console.log((cond ? "ok   " : "FAIL ") + what);
  if (!cond) failures.push(what);
}

function model(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : [null, apiVersion];
  const candidates = [];
  if (group === "monitoring.coreos.com") {
    candidates.push(`@kubernetes-models/prometheus-operator/${group}/${version}/${kind}`);
  } else if (group === null) {
    candidates.push(`kubernetes-models/${version}/${kind}`);
  } else {
    candidates.push(`kubernetes-models/${group}/${version}/${kind}`);
    candidates.push(`kubernetes-models/${group.split(".")[0]}/${version}/${kind}`);
  }
  for (const c of candidates) {
    try { return require(c)[kind]; } catch (e) { if (e.code !== "MODULE_NOT_FOUND") throw e; }
  }
  return null;
}

const kust = YAML.parse(fs.readFileSync(path.join(dir, "kustomization.yaml"), "utf8"));
check(kust.kind === "Kustomization", "kustomization.yaml is a Kustomization");
const listed = new Set(kust.resources);
const onDisk = fs.readdirSync(dir).filter(f => /\.ya?ml$/.test(f) && f !== "kustomization.yaml");
for (const f of onDisk) check(listed.has(f), `${f} is listed in kustomization.yaml`);

const objs = [];
for (const f of kust.resources) {
  const p = path.join(dir, f);
  if (!fs.existsSync(p)) { check(false, `${f} exists`); continue; }
  for (const doc of YAML.parseAllDocuments(fs.readFileSync(p, "utf8"))) {
    if (doc.errors.length) { check(false, `${f}: YAML: ${doc.errors[0].message}`); continue; }
    const obj = doc.toJS();
    if (!obj) continue;
    const M = model(obj.apiVersion, obj.kind);
    const name = `${f}: ${obj.kind}/${obj.metadata && obj.metadata.name}`;
    if (!M) { check(false, `${name}: no schema for ${obj.apiVersion} ${obj.kind}`); continue; }
    try {
      new M(obj).validate();
      check(true, `${name} is valid against the ${obj.apiVersion} ${obj.kind} schema`);
    } catch (e) {
      check(false, `${name}: ${e.message.split("\n").slice(0, 6).join(" | ")}`);
    }
    objs.push(obj);
  }
}

const find = (kind, name) => objs.find(o => o.kind === kind && o.metadata.name === name);
const ns = objs.find(o => o.kind === "Namespace");
check(ns && ns.metadata.name === kust.namespace, "the Namespace is the kustomization's namespace");
const cm = find("ConfigMap", "effadam-training");
const sts = find("StatefulSet", "effadam-server");
const svc = find("Service", "effadam-server");
const job = find("Job", "effadam-worker");
const sm = objs.find(o => o.kind === "ServiceMonitor");
const pm = objs.find(o => o.kind === "PodMonitor");
check(cm && sts && svc && job && sm && pm, "ConfigMap, StatefulSet, Service, Job, ServiceMonitor, PodMonitor present");
if (failures.length) finish();

const matches = (sel, labels) => Object.entries(sel).every(([k, v]) => labels[k] === v);
check(svc.spec.clusterIP === "None", "the server Service is headless");
check(sts.spec.serviceName === svc.metadata.name, "StatefulSet.serviceName is the headless Service");
check(matches(svc.spec.selector, sts.spec.template.metadata.labels), "the Service selects the server pods");
check(matches(sts.spec.selector.matchLabels, sts.spec.template.metadata.labels), "the StatefulSet selects its pods");
check((sts.spec.volumeClaimTemplates || []).length === 1, "the server has a PersistentVolumeClaim template");
check(matches(sm.spec.selector.matchLabels, svc.metadata.labels), "the ServiceMonitor selects the server Service");
check(svc.spec.ports.some(p => p.name === sm.spec.endpoints[0].port), "the ServiceMonitor's port is a Service port");
check(matches(pm.spec.selector.matchLabels, job.spec.template.metadata.labels), "the PodMonitor selects the worker pods");
check(job.spec.completionMode === "Indexed", "the worker Job is Indexed (rank = completion index)");
check(String(job.spec.completions) === cm.data.EFFADAM_WORKERS &&
      String(job.spec.parallelism) === cm.data.EFFADAM_WORKERS,
      `the worker Job runs EFFADAM_WORKERS=${cm.data.EFFADAM_WORKERS} pods at once`);

const serverC = sts.spec.template.spec.containers[0];
const workerC = job.spec.template.spec.containers[0];
check(serverC.readinessProbe && serverC.readinessProbe.grpc && serverC.readinessProbe.grpc.port === 50051,
      "server readiness probe: grpc health on 50051");
check(serverC.livenessProbe && serverC.livenessProbe.grpc && serverC.livenessProbe.grpc.port === 50051,
      "server liveness probe: grpc health on 50051");
check(!!workerC.livenessProbe, "worker liveness probe");
for (const [who, c, pod] of [["server", serverC, sts.spec.template], ["worker", workerC, job.spec.template]]) {
  check(c.resources && c.resources.requests && c.resources.requests.cpu && c.resources.requests.memory,
        `${who}: cpu and memory requests`);
  const a = pod.metadata.annotations || {};
  check(a["prometheus.io/scrape"] === "true" && c.ports.some(p => String(p.containerPort) === a["prometheus.io/port"]),
        `${who}: prometheus.io scrape annotations name a container port`);
  check(pod.spec.securityContext && pod.spec.securityContext.runAsNonRoot === true, `${who}: runs as non-root`);
  check((c.envFrom || []).some(e => e.configMapRef && e.configMapRef.name === cm.metadata.name),
        `${who}: reads the training ConfigMap`);
  const defined = new Set([...Object.keys(cm.data), ...(c.env || []).map(e => e.name)]);
  for (const arg of c.args) {
    for (const m of arg.matchAll(/\$\(([A-Z0-9_]+)\)/g)) {
      check(defined.has(m[1]), `${who}: $(${m[1]}) in ${arg} is defined`);
    }
  }
}
check(workerC.args.some(a => a.startsWith(`--server=${sts.metadata.name}-0.${svc.metadata.name}:`)),
      "workers dial the server pod's stable name through the headless Service");
// The args must be those of deploy/docker-compose.yml; a file of them is
// written for static_check.sh to compare.
if (process.env.K8S_ARGS_OUT) {
  fs.writeFileSync(process.env.K8S_ARGS_OUT, JSON.stringify({server: serverC.args, worker: workerC.args}));
}
finish();

function finish() {
  if (failures.length) {
    console.error(`validate_k8s: ${failures.length} check(s) failed`);
    process.exit(1);
  }
  console.log("validate_k8s: all checks passed");
  process.exit(0);
}
