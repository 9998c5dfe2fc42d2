// Validates the kustomize base deploy/k8s against the Kubernetes schemas
// (npm: kubernetes-models, @kubernetes-models/prometheus-operator for the
// ServiceMonitor and PodMonitor), then checks what schemas cannot: the
// kustomization lists every manifest and each exists, the objects refer to
// each other correctly (Service/StatefulSet/monitors selectors, ConfigMap,
// ports), probes and resource requests are set, the worker Job's size
// equals EFFADAM_WORKERS, and every $(VAR) in args is defined. Then the
// TLS component DIR/tls (JSON patches applied here, since no kustomize is at
// hand): the patched objects and the generated Secret are valid, every
// file a flag or probe names is mounted from the Secret, workers do not get
// the server's key, and (with EFFADAM_BIN, a build/bin directory) every
// flag exists in the binary that gets it.
// The ConfigMap is made from the kustomization's configMapGenerator (an env
// file), as kustomize makes it. The PodDisruptionBudgets, NetworkPolicies
// and the PrometheusRule are validated with the others and checked to
// select the right pods.
// Usage: node validate_k8s.cjs DIR   (NODE_PATH=the npm prefix's node_modules)
//        node validate_k8s.cjs --rendered FILE...  (output of `kubectl
//        kustomize`: every object against its schema, the generated
//        ConfigMap's hashed name used by every reference to it, the
//        recommended labels on every object)
"use strict";
const fs = require("fs");
const path = require("path");
const YAML = require("yaml");
const childProcess = require("child_process");

const failures = [];
if (process.argv[2] === "--rendered") {
  validateRendered(process.argv.slice(3));
  finish();
}
const dir = process.argv[2];
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

// The ConfigMap of configMapGenerator: KEY=VALUE lines of its env file.
function parseEnvFile(text) {
  const data = {};
  for (const line of text.split("\n")) {
    const t = line.trim();
    if (!t || t.startsWith("#")) continue;
    const eq = t.indexOf("=");
    data[t.slice(0, eq)] = t.slice(eq + 1);
  }
  return data;
}
const objs = [];
for (const g of kust.configMapGenerator || []) {
  const data = {};
  for (const e of g.envs || []) {
    const p = path.join(dir, e);
    check(fs.existsSync(p), `configMapGenerator ${g.name}: ${e} exists`);
    if (fs.existsSync(p)) Object.assign(data, parseEnvFile(fs.readFileSync(p, "utf8")));
  }
  const cmObj = {apiVersion: "v1", kind: "ConfigMap", metadata: {name: g.name, namespace: kust.namespace}, data};
  validate(cmObj, `configMapGenerator: ConfigMap/${g.name}`);
  objs.push(cmObj);
}
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
const rule = objs.find(o => o.kind === "PrometheusRule");
const pdbs = objs.filter(o => o.kind === "PodDisruptionBudget");
const netpols = objs.filter(o => o.kind === "NetworkPolicy");
check(cm && sts && svc && job && sm && pm && rule,
      "ConfigMap, StatefulSet, Service, Job, ServiceMonitor, PodMonitor, PrometheusRule present");
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
checkPlatformRules();
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
check(workerC.args.some(a => a.startsWith(`--server=${sts.metadata.name}-{shard}.${svc.metadata.name}:`)),
      "workers dial every shard's server pod by its stable name through the headless Service");
check(workerC.args.includes("--num_shards=$(EFFADAM_NUM_SHARDS)") &&
      serverC.args.includes("--num_shards=$(EFFADAM_NUM_SHARDS)"),
      "server and workers take the number of shards from the ConfigMap");
check((serverC.env || []).some(e => e.name === "FLAGS_shard" && e.valueFrom &&
        e.valueFrom.fieldRef.fieldPath === "metadata.labels['apps.kubernetes.io/pod-index']") &&
      serverC.args.includes("--fromenv=shard"),
      "each server pod is the shard of its StatefulSet ordinal");
// The args must be those of deploy/docker-compose.yml; a file of them is
// written for static_check.sh to compare.
if (process.env.K8S_ARGS_OUT) {
  fs.writeFileSync(process.env.K8S_ARGS_OUT, JSON.stringify({server: serverC.args, worker: workerC.args}));
}
validateTlsComponent(path.join(dir, "tls"));
validatePytorchOverlay(path.join(dir, "overlays", "pytorch"));
finish();

// The overlay overlays/pytorch: the base's worker Job patched to run the
// PyTorch example from the pytorch image, validated as the base is, its
// flags those the example takes, its rank the completion index.
function validatePytorchOverlay(odir) {
  const kpath = path.join(odir, "kustomization.yaml");
  check(fs.existsSync(kpath), "the overlay overlays/pytorch exists");
  if (!fs.existsSync(kpath)) return;
  const k = YAML.parse(fs.readFileSync(kpath, "utf8"));
  check(k.kind === "Kustomization" && JSON.stringify(k.resources) === JSON.stringify(["../.."]),
        "overlays/pytorch is a Kustomization of the base");
  const p = (k.patches || []).find(x => x.target && x.target.kind === "Job");
  check(!!p && p.target.name === job.metadata.name, "overlays/pytorch patches the worker Job");
  if (!p) return;
  const ops = YAML.parse(fs.readFileSync(path.join(odir, p.path), "utf8"));
  const pj = applyJsonPatch(job, ops, `overlays/pytorch/${p.path}`);
  validate(pj, "overlays/pytorch: the patched Job");
  const c = pj.spec.template.spec.containers[0];
  check((k.images || []).some(i => i.name === c.image) && c.image === "effadam-pytorch",
        "overlays/pytorch: the worker runs the image effadam-pytorch, set in images:");
  const script = c.command && c.command[0] === "python3" && c.command[1];
  const m = script && script.match(/^\/opt\/effadam\/(examples\/[a-z_]+\.py)$/);
  check(!!m && fs.existsSync(path.join(dir, "..", "..", m[1])),
        `overlays/pytorch: runs an example the image holds (${script})`);
  if (m) {
    // Every flag must be one the example (or example_worker.py) defines.
    const src = [m[1], "examples/example_worker.py"]
      .map(f => fs.readFileSync(path.join(dir, "..", "..", f), "utf8")).join("\n");
    for (const a of c.args) {
      const flag = a.split("=")[0];
      // Defined as "--flag", or by a loop over "flag" names.
      check(src.includes(`"${flag}"`) || src.includes(`"${flag.slice(2)}"`),
            `overlays/pytorch: the example takes ${flag}`);
    }
  }
  check(!c.args.some(a => /^--(rank|server|num_shards)=/.test(a)),
        "overlays/pytorch: no --rank or --server: the rank is the completion index, the server EFFADAM_SERVER");
  const env = Object.fromEntries((c.env || []).map(e => [e.name, e]));
  check(!!env.JOB_COMPLETION_INDEX && env.JOB_COMPLETION_INDEX.valueFrom,
        "overlays/pytorch: JOB_COMPLETION_INDEX (the rank) is in the environment");
  check(env.EFFADAM_SERVER && env.EFFADAM_SERVER.value ===
        `${sts.metadata.name}-{shard}.${svc.metadata.name}:50051`,
        "overlays/pytorch: EFFADAM_SERVER dials every shard's server pod");
  check(env.WORLD_SIZE && env.WORLD_SIZE.value === "$(EFFADAM_WORKERS)",
        "overlays/pytorch: WORLD_SIZE is EFFADAM_WORKERS, checked against the server's --workers");
  const defined = new Set([...Object.keys(cm.data), ...(c.env || []).map(e => e.name)]);
  for (const s of [...c.args, ...(c.env || []).map(e => e.value || "")]) {
    for (const r of s.matchAll(/\$\(([A-Z0-9_]+)\)/g)) {
      check(defined.has(r[1]), `overlays/pytorch: $(${r[1]}) in ${s} is defined`);
    }
  }
  check(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory,
        "overlays/pytorch: cpu and memory requests, a memory limit");
  check(c.ports.some(x => x.containerPort === 9465) && c.args.includes("--metrics_listen=0.0.0.0:9465"),
        "overlays/pytorch: the worker serves metrics on the port the PodMonitor scrapes");
}

function validate(obj, what) {
  const M = model(obj.apiVersion, obj.kind);
  try {
    new M(obj).validate();
    check(true, `${what} is valid against the ${obj.apiVersion} ${obj.kind} schema`);
  } catch (e) {
    check(false, `${what}: ${e.message.split("\n").slice(0, 6).join(" | ")}`);
  }
}

// RFC 6902 "add" and "replace" (all the component uses) on a copy of obj.
function applyJsonPatch(obj, ops, what) {
  const out = JSON.parse(JSON.stringify(obj));
  for (const op of ops) {
    const keys = op.path.split("/").slice(1).map(k => k.replace(/~1/g, "/").replace(/~0/g, "~"));
    const last = keys.pop();
    let parent = out;
    for (const k of keys) {
      if (parent === undefined || parent === null) break;
      parent = parent[k];
    }
    const known = op.op === "add" || op.op === "replace";
    const ok = known && parent !== undefined && parent !== null &&
      (op.op === "add" || (Array.isArray(parent) ? last < parent.length : last in parent));
    check(ok, `${what}: ${op.op} ${op.path} applies`);
    if (!ok) continue;
    if (Array.isArray(parent)) {
      if (last === "-") parent.push(op.value);
      else if (op.op === "add") parent.splice(Number(last), 0, op.value);
      else parent[Number(last)] = op.value;
    } else {
      parent[last] = op.value;
    }
  }
  return out;
}

// Whether `help` (--helpfull) defines `flag` ("  --flag (description...").
function hasFlag(help, flag) {
  return new RegExp("^\\s+" + flag + " \\(", "m").test(help);
}

function helpOf(binary) {
  const bin = process.env.EFFADAM_BIN;
  if (!bin) return null;
  const r = childProcess.spawnSync(path.join(bin, binary), ["--helpfull"], {encoding: "utf8", timeout: 30000});
  return (r.stdout || "") + (r.stderr || "");
}

function validateTlsComponent(tlsDir) {
  const kpath = path.join(tlsDir, "kustomization.yaml");
  check(fs.existsSync(kpath), "the TLS component tls/kustomization.yaml exists");
  if (!fs.existsSync(kpath)) return;
  const comp = YAML.parse(fs.readFileSync(kpath, "utf8"));
  check(comp.kind === "Component" && comp.apiVersion === "kustomize.config.k8s.io/v1alpha1",
        "tls/ is a kustomize Component");
  const gen = (comp.secretGenerator || []).find(g => g.name === "effadam-tls");
  check(!!gen, "tls/ generates the Secret effadam-tls");
  if (!gen) return;
  const files = new Set(gen.files);
  // The Secret as kustomize would generate it, with placeholder contents.
  const secret = {apiVersion: "v1", kind: "Secret", metadata: {name: "effadam-tls", namespace: kust.namespace},
                  type: "Opaque", data: Object.fromEntries(gen.files.map(f => [f, Buffer.from("x").toString("base64")]))};
  validate(secret, "tls/: the generated Secret");
  const binaries = {StatefulSet: "effadam-server", Job: "effadam-worker"};
  const patched = {};
  for (const p of comp.patches) {
    const target = objs.find(o => o.kind === p.target.kind && o.metadata.name === p.target.name);
    check(!!target, `tls/${p.path} targets ${p.target.kind}/${p.target.name} of the base`);
    if (!target) continue;
    const ops = YAML.parse(fs.readFileSync(path.join(tlsDir, p.path), "utf8"));
    const obj = applyJsonPatch(target, ops, `tls/${p.path}`);
    validate(obj, `tls/${p.path}: the patched ${obj.kind}/${obj.metadata.name}`);
    patched[obj.kind] = obj;
    const pod = obj.spec.template.spec;
    const c = pod.containers[0];
    const vol = (pod.volumes || []).find(v => v.secret && v.secret.secretName === "effadam-tls");
    check(!!vol, `${obj.kind}: mounts the Secret effadam-tls`);
    if (!vol) continue;
    const mount = (c.volumeMounts || []).find(m => m.name === vol.name);
    check(!!mount && mount.readOnly === true, `${obj.kind}: the Secret is mounted read-only`);
    const items = new Set((vol.secret.items || []).map(i => i.path));
    for (const i of vol.secret.items || []) check(files.has(i.key), `${obj.kind}: Secret key ${i.key} is generated`);
    check(pod.securityContext && pod.securityContext.fsGroup === 10001,
          `${obj.kind}: fsGroup 10001 reads the 0440 Secret files`);
    const commands = [c.args];
    for (const probe of [c.readinessProbe, c.livenessProbe]) if (probe && probe.exec) commands.push(probe.exec.command);
    for (const argv of commands) {
      for (const a of argv) {
        const m = a.match(/^(--[a-z_]+)=(\/etc\/effadam\/tls\/.*)$/);
        if (!m) continue;
        const rel = mount ? path.relative(mount.mountPath, m[2]) : m[2];
        check(!!mount && items.has(rel), `${obj.kind}: ${a} is a mounted Secret file`);
      }
    }
    const help = helpOf(binaries[obj.kind]);
    if (help !== null) {
      for (const a of c.args.filter(x => x.startsWith("--tls") || x.startsWith("--auth"))) {
        check(hasFlag(help, a.split("=")[0]), `${obj.kind}: ${binaries[obj.kind]} has the flag ${a.split("=")[0]}`);
      }
    }
  }
  const s = patched.StatefulSet, j = patched.Job;
  if (!s || !j) { check(false, "tls/ patches the server StatefulSet and the worker Job"); return; }
  const jv = j.spec.template.spec.volumes.find(v => v.name === "tls");
  check(jv && !jv.secret.items.some(i => i.key === "server.key"), "workers do not mount the server's key");
  const sc = s.spec.template.spec.containers[0];
  // Shard 0's name; the certificate's SAN covers every shard's (docs/security.md).
  const dialed = j.spec.template.spec.containers[0].args.find(a => a.startsWith("--server=")).slice(9).split(":")[0].replace("{shard}", "0");
  const healthHelp = helpOf("effadam-health");
  for (const [name, probe] of [["readiness", sc.readinessProbe], ["liveness", sc.livenessProbe]]) {
    const cmd = probe && probe.exec && probe.exec.command;
    check(!!cmd && cmd[0] === "effadam-health" && cmd.some(a => a.startsWith("--tls_ca_file=")),
          `server ${name} probe: effadam-health over TLS (native gRPC probes cannot speak TLS)`);
    if (!cmd) continue;
    check(cmd.includes(`--tls_server_name=${dialed}`), `server ${name} probe checks the name the workers dial (${dialed})`);
    if (healthHelp !== null) {
      for (const a of cmd.slice(1)) {
        const flag = a.split("=")[0];
        check(hasFlag(healthHelp, flag), `effadam-health has the flag ${flag}`);
      }
    }
  }
}

// What a platform team asks of the manifests (deploy/README.md).
function checkPlatformRules() {
  const podLabels = {server: sts.spec.template.metadata.labels, worker: job.spec.template.metadata.labels};
  check(ns.metadata.labels && ns.metadata.labels["pod-security.kubernetes.io/enforce"] === "restricted",
        "the Namespace enforces the restricted Pod Security profile");
  for (const who of ["server", "worker"]) {
    check(pdbs.some(p => matches(p.spec.selector.matchLabels, podLabels[who]) && p.spec.maxUnavailable !== undefined),
          `a PodDisruptionBudget covers the ${who} pods`);
  }
  const sp = netpols.find(n => matches(n.spec.podSelector.matchLabels, podLabels.server));
  check(!!sp && sp.spec.policyTypes.includes("Ingress"), "a NetworkPolicy restricts ingress to the server pods");
  if (sp) {
    const grpcRule = sp.spec.ingress.find(r => r.ports.some(p => p.port === "grpc"));
    check(!!grpcRule && grpcRule.from.every(f => f.podSelector && !f.namespaceSelector &&
                                             matches(f.podSelector.matchLabels, podLabels.worker)),
          "the server's gRPC port admits the worker pods only");
    const metricsRule = sp.spec.ingress.find(r => r.ports.some(p => p.port === "metrics"));
    check(!!metricsRule && metricsRule.from.every(f => f.namespaceSelector && f.podSelector),
          "the server's metrics port admits Prometheus only");
    check(sp.spec.ingress.length === 2, "the server admits nothing else");
  }
  const wp = netpols.find(n => matches(n.spec.podSelector.matchLabels, podLabels.worker));
  check(!!wp && wp.spec.ingress.length === 1 && wp.spec.ingress[0].ports.every(p => p.port === "metrics"),
        "the worker pods admit Prometheus on their metrics port only");
  const sc = sts.spec.template.spec.containers[0];
  check(sc.startupProbe && sc.startupProbe.grpc && sc.startupProbe.grpc.port === 50051 &&
        sc.startupProbe.periodSeconds * sc.startupProbe.failureThreshold >= 120,
        "server startup probe: grpc health, at least 2 minutes for the checkpoint restore");
  check(sc.args.includes("--metrics_linger=$(EFFADAM_SERVER_LINGER)") && cm.data.EFFADAM_SERVER_LINGER === "inf",
        "the server stays in the finished state until deleted (--metrics_linger=inf)");
  const vct = sts.spec.volumeClaimTemplates[0];
  check(vct.metadata.labels && vct.metadata.labels["app.kubernetes.io/part-of"] === "effadam",
        "the server's volumes carry app.kubernetes.io/part-of (a new run deletes them by label)");
  check(job.spec.template.spec.restartPolicy === "Never" && job.spec.podFailurePolicy &&
        job.spec.podFailurePolicy.rules.some(r => r.action === "Ignore" &&
          (r.onPodConditions || []).some(c => c.type === "DisruptionTarget")),
        "the worker Job: restartPolicy Never, disruptions do not count as failures");
  check(job.spec.backoffLimitPerIndex > 0 && job.spec.ttlSecondsAfterFinished > 0,
        "the worker Job: backoffLimitPerIndex and ttlSecondsAfterFinished");
  const recommended = ["app.kubernetes.io/part-of", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                       "app.kubernetes.io/managed-by"];
  const lab = (kust.labels || []).find(l => recommended.every(k => k in l.pairs));
  check(!!lab && lab.includeSelectors === false && lab.includeTemplates === true,
        "kustomization.yaml adds the recommended labels to every object and pod, not to selectors");
  for (const o of objs.filter(o => o.kind !== "Namespace" && o.kind !== "ConfigMap")) {
    check(o.metadata.labels && o.metadata.labels["app.kubernetes.io/name"],
          `${o.kind}/${o.metadata.name} has app.kubernetes.io/name`);
  }
  const alerts = rule.spec.groups.flatMap(g => g.rules.map(r => r.alert));
  check(["EffadamWorkersMissing", "EffadamNoRoundClosed", "EffadamCheckpointFailing", "EffadamRoundsDropped",
         "EffadamWorkerResyncing"].every(a => alerts.includes(a)), "the PrometheusRule has the run's alerts");
}

// Objects as kubectl kustomize renders them.
function validateRendered(files) {
  for (const f of files) {
    const docs = YAML.parseAllDocuments(fs.readFileSync(f, "utf8")).map(d => d.toJS()).filter(Boolean);
    check(docs.length > 0, `${f}: rendered objects`);
    const configMaps = new Set(docs.filter(o => o.kind === "ConfigMap").map(o => o.metadata.name));
    const secrets = new Set(docs.filter(o => o.kind === "Secret").map(o => o.metadata.name));
    for (const o of docs) {
      const what = `${path.basename(f)}: ${o.kind}/${o.metadata.name}`;
      if (!model(o.apiVersion, o.kind)) { check(false, `${what}: no schema`); continue; }
      validate(o, what);
      const labels = o.metadata.labels || {};
      check(labels["app.kubernetes.io/part-of"] === "effadam" && labels["app.kubernetes.io/instance"] &&
            labels["app.kubernetes.io/version"], `${what} has the recommended labels`);
      const pod = o.spec && o.spec.template && o.spec.template.spec;
      if (!pod) continue;
      for (const c of pod.containers) {
        for (const e of c.envFrom || []) {
          if (e.configMapRef) check(configMaps.has(e.configMapRef.name),
                                    `${what}: envFrom ${e.configMapRef.name} is the generated ConfigMap`);
        }
      }
      for (const v of pod.volumes || []) {
        if (v.secret) check(secrets.has(v.secret.secretName), `${what}: volume ${v.name} is the generated Secret`);
      }
    }
  }
}

function finish() {
  if (failures.length) {
    console.error(`validate_k8s: ${failures.length} check(s) failed`);
    process.exit(1);
  }
  console.log("validate_k8s: all checks passed");
  process.exit(0);
}
