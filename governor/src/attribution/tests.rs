use std::{
    env, fs,
    os::unix::fs::{MetadataExt, symlink},
    process,
    sync::atomic::{AtomicUsize, Ordering},
};

use proptest::prelude::*;

use super::*;

const UID: &str = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901";
const UID_UNDERSCORES: &str = "1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901";
/// The kubelet's uid for a static pod: a hash of the manifest.
const STATIC_UID: &str = "5c8e3f2a9b1d4c6e8f0a2b4c6d8e0f1a";
const ID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00123456789abcdef0123456789abcdef";

fn found(container_id: Option<&str>, pod_uid: Option<&str>, runtime: Option<&'static str>) -> ContainerRef {
    ContainerRef { container_id: container_id.map(str::to_owned), pod_uid: pod_uid.map(str::to_owned), runtime }
}

#[test]
fn systemd_driver_containerd() {
    let path = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_UNDERSCORES}.slice/cri-containerd-{ID}.scope"
    );
    assert_eq!(parse_container(&path), Some(found(Some(ID), Some(UID), Some("containerd"))));
}

#[test]
fn systemd_driver_crio() {
    let path = format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_UNDERSCORES}.slice/crio-{ID}.scope"
    );
    assert_eq!(parse_container(&path), Some(found(Some(ID), Some(UID), Some("cri-o"))));
    // CRI-O puts systemd-in-a-container workloads one level down.
    assert_eq!(parse_container(&format!("{path}/container")), Some(found(Some(ID), Some(UID), Some("cri-o"))));
}

#[test]
fn crio_conmon_gets_the_pod_but_no_container() {
    let pod = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_UNDERSCORES}.slice");
    assert_eq!(parse_container(&format!("{pod}/crio-conmon-{ID}.scope")), Some(found(None, Some(UID), Some("cri-o"))));
    assert_eq!(parse_container(&format!("/machine.slice/libpod-conmon-{ID}.scope")), None);
    assert_eq!(
        parse_container(&format!("/machine.slice/libpod-{ID}.scope")),
        Some(found(Some(ID), None, Some("podman")))
    );
}

#[test]
fn systemd_driver_guaranteed_qos() {
    let path = format!("/kubepods.slice/kubepods-pod{UID_UNDERSCORES}.slice/cri-containerd-{ID}.scope");
    assert_eq!(parse_container(&path), Some(found(Some(ID), Some(UID), Some("containerd"))));
}

#[test]
fn systemd_driver_under_kind() {
    // kind's node container, seen from the host, holds a whole kubelet.
    let node = "a".repeat(64);
    let path = format!(
        "/system.slice/docker-{node}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
         kubelet-kubepods-besteffort-pod{UID_UNDERSCORES}.slice/cri-containerd-{ID}.scope"
    );
    assert_eq!(parse_container(&path), Some(found(Some(ID), Some(UID), Some("containerd"))));
    // The pod's own cgroup is not the node container's.
    let (pod, _) = path.rsplit_once('/').unwrap();
    assert_eq!(parse_container(pod), Some(found(None, Some(UID), None)));
}

#[test]
fn cgroupfs_driver() {
    assert_eq!(parse_container(&format!("/kubepods/burstable/pod{UID}/{ID}")), Some(found(Some(ID), Some(UID), None)));
    assert_eq!(parse_container(&format!("/kubepods/pod{UID}/{ID}")), Some(found(Some(ID), Some(UID), None)));
    assert_eq!(parse_container(&format!("/kubepods/besteffort/pod{UID}/{ID}")), Some(found(Some(ID), Some(UID), None)));
    assert_eq!(
        parse_container(&format!("/kubepods/besteffort/pod{UID}/crio-{ID}")),
        Some(found(Some(ID), Some(UID), Some("cri-o")))
    );
}

#[test]
fn docker() {
    assert_eq!(
        parse_container(&format!("/system.slice/docker-{ID}.scope")),
        Some(found(Some(ID), None, Some("docker")))
    );
    assert_eq!(parse_container(&format!("/docker/{ID}")), Some(found(Some(ID), None, Some("docker"))));
    // Sub-cgroups (systemd inside the container) belong to the container.
    assert_eq!(
        parse_container(&format!("/system.slice/docker-{ID}.scope/init.scope")),
        Some(found(Some(ID), None, Some("docker")))
    );
}

#[test]
fn pod_level_cgroups_give_the_uid_alone() {
    let systemd = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_UNDERSCORES}.slice");
    assert_eq!(parse_container(&systemd), Some(found(None, Some(UID), None)));
    assert_eq!(parse_container(&format!("/kubepods/burstable/pod{UID}")), Some(found(None, Some(UID), None)));
    assert_eq!(parse_container(&format!("/kubepods/pod{UID}/")), Some(found(None, Some(UID), None)));
}

#[test]
fn static_pods_have_hash_uids() {
    let path = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{ID}.scope"
    );
    assert_eq!(parse_container(&path), Some(found(Some(ID), Some(STATIC_UID), Some("containerd"))));
    assert_eq!(
        parse_container(&format!("/kubepods/pod{STATIC_UID}/{ID}")),
        Some(found(Some(ID), Some(STATIC_UID), None))
    );
}

#[test]
fn other_cgroups_give_none() {
    for path in [
        "/user.slice/user-0.slice/session-1.scope",
        "/",
        "",
        "/system.slice/ssh.service",
        "/system.slice/containerd.service",
        "/kubepods.slice",
        "/kubepods.slice/kubepods-burstable.slice",
        "/kubepods/burstable",
        "/init.scope",
    ] {
        assert_eq!(parse_container(path), None, "{path}");
    }
}

#[test]
fn malformed_ids_are_rejected() {
    let upper = ID.to_uppercase();
    let short = &ID[1..];
    let long = format!("{ID}0");
    for id in [upper.as_str(), short, long.as_str(), "", "not-hex"] {
        assert_eq!(parse_container(&format!("/system.slice/docker-{id}.scope")), None, "{id}");
        assert_eq!(parse_container(&format!("/docker/{id}")), None, "{id}");
    }
    let bad_uids = [
        UID.to_uppercase(),
        UID[..35].to_owned(),
        format!("{UID}0"),
        UID.replace('-', "_"),
        UID.replace('-', "")[1..].to_owned(),
    ];
    for uid in &bad_uids {
        assert_eq!(parse_container(&format!("/kubepods/pod{uid}")), None, "{uid}");
    }
    // Dashes have no place in a systemd unit's last component.
    assert_eq!(parse_container(&format!("/kubepods.slice/kubepods-pod{UID}.slice")), None);
    // A pod slice outside kubepods, a pod dir outside /kubepods, a bare id
    // under neither a pod nor /docker.
    assert_eq!(parse_container(&format!("/other.slice/other-pod{UID_UNDERSCORES}.slice")), None);
    assert_eq!(parse_container(&format!("/pod{UID}/{ID}")), None);
    assert_eq!(parse_container(&format!("/kubepods/burstable/{ID}")), None);
    assert_eq!(parse_container(&format!("/system.slice/{ID}")), None);
}

#[test]
fn pod_log_dir_names() {
    assert_eq!(
        parse_pod_log_dir(&format!("default_web-0_{UID}")),
        Some((UID.to_owned(), PodName { namespace: "default".to_owned(), name: "web-0".to_owned() }))
    );
    assert_eq!(
        parse_pod_log_dir(&format!("kube-system_kube-apiserver-node1.example_{STATIC_UID}")),
        Some((
            STATIC_UID.to_owned(),
            PodName { namespace: "kube-system".to_owned(), name: "kube-apiserver-node1.example".to_owned() }
        ))
    );
    for name in [
        String::new(),
        "default_web".to_owned(),
        format!("default_web_{UID}_x"),
        format!("_web_{UID}"),
        format!("default__{UID}"),
        format!("default_web_{}", UID.to_uppercase()),
        format!("Default_web_{UID}"),
        format!("my.ns_web_{UID}"),
        format!("default_-web_{UID}"),
        format!("{}_web_{UID}", "n".repeat(64)),
        "default_web_not-a-uid".to_owned(),
    ] {
        assert_eq!(parse_pod_log_dir(&name), None, "{name}");
    }
}

/// A directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos());
        let name = format!("governor-attribution-{}-{nanos}-{}", process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = env::temp_dir().join(name);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Self(dir)
    }

    /// Creates `relative` (and its parents) and returns its inode number.
    fn mkdir(&self, relative: &str) -> u64 {
        let dir = self.0.join(relative);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        fs::metadata(&dir).expect("metadata of a new dir").ino()
    }

    fn root_ino(&self) -> u64 {
        fs::metadata(&self.0).expect("metadata of the temp dir").ino()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn pod_log_dirs_are_read_and_others_skipped() {
    let logs = TempDir::new();
    logs.mkdir(&format!("default_web-0_{UID}/web"));
    logs.mkdir(&format!("kube-system_etcd-node1_{STATIC_UID}"));
    logs.mkdir("lost+found");
    fs::write(logs.0.join(format!("files_are-not-pods_{}", UID.replace('1', "2"))), "").expect("write file");
    let pods = read_pod_log_dirs(&logs.0);
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert_eq!(pods[UID], PodName { namespace: "default".to_owned(), name: "web-0".to_owned() });
    assert_eq!(pods[STATIC_UID], PodName { namespace: "kube-system".to_owned(), name: "etcd-node1".to_owned() });
    assert!(read_pod_log_dirs(&logs.0.join("missing")).is_empty());
}

#[test]
fn resolver_maps_inodes_to_paths() {
    let root = TempDir::new();
    let service = root.mkdir("system.slice/ssh.service");
    let slice = root.mkdir("system.slice");
    fs::write(root.0.join("system.slice/cgroup.procs"), "").expect("write file");
    let mut resolver = CgroupResolver::new(root.0.clone());
    assert_eq!(resolver.resolve(service, 0).as_deref(), Some("/system.slice/ssh.service"));
    assert_eq!(resolver.resolve(slice, 0).as_deref(), Some("/system.slice"));
    assert_eq!(resolver.resolve(root.root_ino(), 0).as_deref(), Some("/"));
    assert_eq!(resolver.resolve(0, 100), None, "id 0 is no cgroup");
    assert_eq!(resolver.scanned_at, Some(0), "id 0 does not walk");
}

#[test]
fn new_cgroups_are_found_after_the_rescan_interval() {
    let root = TempDir::new();
    let old = root.mkdir("old");
    let mut resolver = CgroupResolver::new(root.0.clone());
    assert_eq!(resolver.resolve(old, 100).as_deref(), Some("/old"));
    let new = root.mkdir("old/new");
    assert_eq!(resolver.resolve(new, 101), None, "too soon after the last walk");
    assert_eq!(resolver.resolve(new, 104), None, "still too soon");
    assert_eq!(resolver.resolve(new, 105).as_deref(), Some("/old/new"));
    // Each walk starts afresh: removed cgroups leave the cache.
    fs::remove_dir(root.0.join("old/new")).expect("remove dir");
    assert_eq!(resolver.resolve(u64::MAX, 110), None);
    assert_eq!(resolver.resolve(new, 111), None);
    assert_eq!(resolver.resolve(old, 111).as_deref(), Some("/old"));
}

#[test]
fn the_walk_follows_no_symlinks_and_is_bounded() {
    let root = TempDir::new();
    root.mkdir("a/b");
    symlink(root.0.join("a"), root.0.join("link")).expect("symlink");
    let deep: Vec<u64> = (1..=4).map(|depth| root.mkdir(&vec!["d"; depth].join("/"))).collect();
    let mut resolver = CgroupResolver::new(root.0.clone());
    resolver.max_depth = 3;
    assert_eq!(resolver.resolve(deep[2], 0).as_deref(), Some("/d/d/d"));
    assert_eq!(resolver.resolve(deep[3], 10), None, "deeper than max_depth");
    assert!(resolver.paths.values().all(|p| !p.starts_with("/link")), "{:?}", resolver.paths);
    assert_eq!(resolver.paths.len(), 6, "/, /a, /a/b, /d, /d/d, /d/d/d: {:?}", resolver.paths);

    resolver.max_dirs = 2;
    assert_eq!(resolver.resolve(deep[3], 20), None);
    assert_eq!(resolver.paths.len(), 2, "{:?}", resolver.paths);
    assert!(resolver.warned_truncated);

    let mut missing = CgroupResolver::new(root.0.join("missing"));
    assert_eq!(missing.resolve(deep[0], 0), None);
}

#[test]
fn attributor_names_pods() {
    let (cgroups, logs) = (TempDir::new(), TempDir::new());
    let pod = format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_UNDERSCORES}.slice");
    let container = cgroups.mkdir(&format!("{pod}/cri-containerd-{ID}.scope"));
    let service = cgroups.mkdir("system.slice/kubelet.service");
    let mut attributor = Attributor::new(cgroups.0.clone(), Some(logs.0.clone())).with_rescan_interval(10);

    // The pod's log directory does not exist yet: its uid, no name.
    let unnamed = Attribution {
        cgroup: Some(format!("/{pod}/cri-containerd-{ID}.scope")),
        container_id: Some(ID.to_owned()),
        pod_uid: Some(UID.to_owned()),
        pod_namespace: None,
        pod_name: None,
    };
    assert_eq!(attributor.attribute(container, 0), unnamed);
    logs.mkdir(&format!("shop_cart-7d9f_{UID}"));
    assert_eq!(attributor.attribute(container, 9), unnamed, "read again only after the interval");
    let named = Attribution {
        pod_namespace: Some("shop".to_owned()),
        pod_name: Some("cart-7d9f".to_owned()),
        ..unnamed.clone()
    };
    assert_eq!(attributor.attribute(container, 10), named);
    assert_eq!(process_label("java", 42, &named), "shop/cart-7d9f");
    assert_eq!(process_label("java", 42, &unnamed), "java/42");
    assert_eq!(process_label("", 0, &unnamed), "unknown", "no owner known");

    let host = Attribution { cgroup: Some("/system.slice/kubelet.service".to_owned()), ..Attribution::default() };
    assert_eq!(attributor.attribute(service, 10), host);
    assert_eq!(attributor.attribute(0, 10), Attribution::default());

    let mut no_logs = Attributor::new(cgroups.0.clone(), None);
    assert_eq!(no_logs.attribute(container, 0), unnamed);
}

#[test]
fn command_names_stop_at_the_first_nul() {
    assert_eq!(command_name(b"nginx\0\0\0\0\0\0\0\0\0\0\0"), "nginx");
    assert_eq!(command_name(b"0123456789abcdef"), "0123456789abcdef");
    assert_eq!(command_name(b"a\xffb\0garbage\0\0\0\0\0"), "a\u{fffd}b");
    assert_eq!(command_name(&[0; 16]), "");
}

proptest! {
    #[test]
    fn parse_container_never_panics(path in any::<String>()) {
        let _ = parse_container(&path);
    }

    #[test]
    fn parse_container_never_panics_on_path_like_strings(
        path in "(/(kubepods|docker|pod|crio-|[a-z0-9_.-]{0,12}|[0-9a-f]{64}|[0-9a-f-]{36})(\\.slice|\\.scope)?){0,6}",
    ) {
        let _ = parse_container(&path);
    }

    #[test]
    fn systemd_paths_round_trip(
        uid in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        id in "[0-9a-f]{64}",
        qos in prop::sample::select(vec!["", "-burstable", "-besteffort"]),
        (prefix, runtime) in prop::sample::select(vec![
            ("cri-containerd", "containerd"), ("crio", "cri-o"), ("docker", "docker"),
        ]),
    ) {
        let slice = if qos.is_empty() { String::new() } else { format!("/kubepods{qos}.slice") };
        let path = format!(
            "/kubepods.slice{slice}/kubepods{qos}-pod{}.slice/{prefix}-{id}.scope",
            uid.replace('-', "_"),
        );
        prop_assert_eq!(parse_container(&path), Some(found(Some(&id), Some(&uid), Some(runtime))));
    }

    #[test]
    fn cgroupfs_paths_round_trip(
        uid in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        id in "[0-9a-f]{64}",
        qos in prop::sample::select(vec!["", "/burstable", "/besteffort"]),
    ) {
        let path = format!("/kubepods{qos}/pod{uid}/{id}");
        prop_assert_eq!(parse_container(&path), Some(found(Some(&id), Some(&uid), None)));
    }
}
