# Sourced by install-kube.sh and install-node.sh: build commands of the k8s.io/kubernetes Go module.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the k8s.io/* staging modules
# with local paths. So kube_build writes a small wrapper module in a cache folder whose go.mod
# requires k8s.io/kubernetes and replaces each staging module with its published version
# (v0.X.Y for Kubernetes v1.X.Y); the replace list is generated from the release's own go.mod.
# Both scripts share that folder, so the second one reuses the first one's go.sum and build cache.
#
# Needs KUBE_VERSION and WORK set, Go and python3.

kube_module_dir() {
  go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])'
}

# kube_build OUT_DIR PACKAGE...: go build the packages (e.g. k8s.io/kubernetes/cmd/kubelet) into OUT_DIR.
kube_build() {
  local out="$1"; shift
  local kube_dir="$WORK/kubernetes-$KUBE_VERSION"
  mkdir -p "$kube_dir"
  local upstream_gomod
  upstream_gomod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')"
  # The wrapper's go.mod: the release's go and godebug lines, k8s.io/kubernetes required, and every
  # `k8s.io/x => ./staging/src/k8s.io/x` replace turned into `k8s.io/x => k8s.io/x v0.X.Y`.
  python3 - "$upstream_gomod" "$KUBE_VERSION" >"$kube_dir/go.mod" <<'PY'
import re, sys
text, version = open(sys.argv[1]).read(), sys.argv[2]
staging = "v0." + version.split(".", 1)[1]
out = ["module assay.dev/kube-build", ""]
out += [l for l in text.splitlines() if re.match(r"(go|godebug) ", l)]
out += ["", f"require k8s.io/kubernetes {version}", "", "replace ("]
mods = re.findall(r"^\s*(?:replace\s+)?(k8s\.io/\S+)\s*=>\s*\./staging/\S+", text, re.M)
if not mods:
    sys.exit("kube-module: no staging replaces found in k8s.io/kubernetes's go.mod")
out += [f"\t{m} => {m} {staging}" for m in sorted(set(mods))] + [")"]
print("\n".join(out))
PY
  echo "kube-module: building $* of kubernetes $KUBE_VERSION in $kube_dir"

  local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  local ver="k8s.io/component-base/version"
  local ldflags="-s -w -X $ver.gitVersion=$KUBE_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=$minor"
  ldflags+=" -X $ver.gitTreeState=clean -X $ver.buildDate=1970-01-01T00:00:00Z"
  (
    cd "$kube_dir"
    # -mod=mod lets go build complete go.mod and go.sum from the proxy (checked against sum.golang.org).
    nice -n "${ASSAY_BUILD_NICE:-10}" go build -trimpath -mod=mod -ldflags="$ldflags" -o "$out/" "$@"
  )
}
