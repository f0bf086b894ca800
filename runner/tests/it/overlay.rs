//! Overlay mounts: a job's virtual environment at `/venv`, a cached layer that is shared
//! and never written plus a layer of the job's own, written by one container (install)
//! and read, read-only, by the next (tests).

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use ci_runner::{BindMount, Network, OverlayMount, OverlayUpper};

use crate::support::{TestContext, USERNS};
use crate::PY;

/// Lists `top` recursively, one relative path per entry, sorted.
const TREE: &str = r#"
import errno, os, shutil, sys
def tree(top):
    out = []
    for root, dirs, files in os.walk(top):
        out += [os.path.relpath(os.path.join(root, n), top) for n in dirs + files]
    return " ".join(sorted(out))
def mountinfo(dest):
    for line in open("/proc/self/mountinfo"):
        fields = line.split()
        if fields[4] == dest:
            print("mount", fields[5], line.split(" - ")[1].strip())
"#;

/// The install container: adds, deletes and rewrites files of the cache, replaces one of
/// its directories wholesale (opaque in the upper layer) and makes, removes and remakes
/// a directory of its own. Moving a directory of the cache takes a copy: with `userxattr`
/// overlayfs records no redirects (`redirect_dir=nofollow`), so rename(2) fails with EXDEV
/// and `mv` or `shutil.move` copy instead.
const INSTALL: &str = r#"
open("/venv/new", "w").write("new\n")
os.unlink("/venv/old")
open("/venv/changed", "w").write("changed\n")
shutil.rmtree("/venv/tree")
os.makedirs("/venv/tree/sub")
open("/venv/tree/sub/c", "w").write("c\n")
os.makedirs("/venv/fresh/deep")
open("/venv/fresh/deep/f", "w").write("f\n")
shutil.rmtree("/venv/fresh")
os.makedirs("/venv/fresh")
open("/venv/fresh/g", "w").write("g\n")
try:
    os.rename("/venv/pkg", "/venv/moved")
except OSError as e:
    print("rename", errno.errorcode[e.errno])
shutil.move("/venv/pkg", "/venv/moved")
print("tree", tree("/venv"))
mountinfo("/venv")
"#;

/// The test container: what it sees, and that it can change nothing.
const TEST: &str = r#"
print("tree", tree("/venv"))
for name in ["new", "changed", "keep", "tree/sub/c", "fresh/g"]:
    print(name, repr(open("/venv/" + name).read()))
def attempt(what, f):
    try:
        f()
        print(what, "OK")
    except OSError as e:
        print(what, errno.errorcode[e.errno])
attempt("create", lambda: open("/venv/x", "w"))
attempt("append", lambda: open("/venv/keep", "a"))
attempt("unlink", lambda: os.unlink("/venv/new"))
attempt("mkdir", lambda: os.mkdir("/venv/tree/d"))
print("opaque", os.getxattr("/upper/tree", "user.overlay.opaque"))
print("fresh opaque", os.listxattr("/upper/fresh"))
mountinfo("/venv")
"#;

/// After the install: the cache's files, the job's, all minus `old` and the cache's
/// `tree` contents, with `pkg` moved.
const TREE_AFTER: &str =
    "tree changed fresh fresh/g keep moved moved/mod.py new tree tree/sub tree/sub/c\n";

/// The layers of one job's `/venv`, under the test's temp dir.
struct Layers {
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
}

impl Layers {
    /// The cache as an earlier install left it, and an empty upper and work dir.
    fn new(ctx: &TestContext) -> Self {
        let venv = ctx.dir.path().join("venv");
        let layers = Layers {
            lower: venv.join("lower"),
            upper: venv.join("upper"),
            work: venv.join("work"),
        };
        for dir in [&layers.lower, &layers.upper, &layers.work] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::create_dir_all(layers.lower.join("tree/sub")).unwrap();
        std::fs::create_dir_all(layers.lower.join("pkg")).unwrap();
        for (file, content) in [
            ("old", "old\n"),
            ("changed", "before\n"),
            ("keep", "keep\n"),
            ("tree/a", "a\n"),
            ("tree/sub/b", "b\n"),
            ("pkg/mod.py", "x = 1\n"),
        ] {
            std::fs::write(layers.lower.join(file), content).unwrap();
        }
        layers
    }

    fn install(&self) -> OverlayMount {
        OverlayMount {
            destination: "/venv".into(),
            lower: vec![self.lower.clone()],
            upper: Some(OverlayUpper {
                upper: self.upper.clone(),
                work: self.work.clone(),
            }),
        }
    }

    fn test(&self) -> OverlayMount {
        OverlayMount {
            destination: "/venv".into(),
            lower: vec![self.upper.clone(), self.lower.clone()],
            upper: None,
        }
    }
}

/// Everything about a tree that a write would change: type, mode, owner, size, mtime,
/// contents and link targets.
fn snapshot(top: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(top: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let meta = std::fs::symlink_metadata(dir).unwrap();
        let mut entry = format!(
            "mode {:o} owner {}:{} size {} mtime {}.{}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        );
        if meta.is_file() {
            entry += &format!(" data {:?}", std::fs::read(dir).unwrap());
        } else if meta.is_symlink() {
            entry += &format!(" -> {:?}", std::fs::read_link(dir).unwrap());
        }
        out.insert(dir.strip_prefix(top).unwrap().to_owned(), entry);
        if meta.is_dir() {
            for e in std::fs::read_dir(dir).unwrap() {
                walk(top, &e.unwrap().path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(top, top, &mut out);
    out
}

/// Install, then test, over the same layers; `root_uid` is the host uid of the
/// containers' root, who owns the layers.
fn install_then_test(ctx: &TestContext, layers: &Layers, root_uid: u32) {
    let cache = snapshot(&layers.lower);

    let mut install = ctx.spec(Network::None, &[PY, "-c", &format!("{TREE}{INSTALL}")]);
    install.overlays.push(layers.install());
    ci_runner::ensure_mountpoints(&ctx.rootfs, &install).unwrap();
    let done = ctx.run(&install);
    assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
    let out = &done.stdout;
    assert!(out.contains(TREE_AFTER), "{out}");
    assert!(out.contains("rename EXDEV\n"), "{out}");
    let mount = out.lines().find(|l| l.starts_with("mount ")).expect(out);
    assert!(mount.starts_with("mount rw,nosuid,nodev,"), "{mount}");
    for option in [
        &format!("lowerdir={}", layers.lower.display()),
        &format!("upperdir={}", layers.upper.display()),
        &format!("workdir={}", layers.work.display()),
        "userxattr",
    ] {
        assert!(mount.contains(option), "{option} missing: {mount}");
    }

    // The cache is untouched; the job's changes are all in its upper layer.
    assert_eq!(snapshot(&layers.lower), cache);
    let upper = |p: &str| layers.upper.join(p);
    let read = |p: &str| std::fs::read_to_string(upper(p)).unwrap();
    assert_eq!(read("new"), "new\n");
    assert_eq!(read("changed"), "changed\n");
    assert_eq!(read("tree/sub/c"), "c\n");
    assert_eq!(read("fresh/g"), "g\n");
    assert_eq!(read("moved/mod.py"), "x = 1\n");
    for deleted in ["old", "pkg"] {
        let meta = std::fs::symlink_metadata(upper(deleted)).unwrap();
        assert!(
            meta.file_type().is_char_device() && meta.rdev() == 0,
            "{deleted} is a whiteout (0/0 character device)"
        );
    }
    for gone in ["keep", "tree/a", "tree/sub/b", "fresh/deep"] {
        assert!(!upper(gone).exists(), "{gone} in the upper layer");
    }
    assert_eq!(std::fs::metadata(upper("new")).unwrap().uid(), root_uid);

    let mut test = ctx.spec(Network::None, &[PY, "-c", &format!("{TREE}{TEST}")]);
    test.overlays.push(layers.test());
    // To read the upper layer's markers as the test container's root sees them.
    test.mounts.push(BindMount {
        source: layers.upper.clone(),
        destination: "/upper".into(),
        readonly: true,
    });
    ci_runner::ensure_mountpoints(&ctx.rootfs, &test).unwrap();
    let upper_before = snapshot(&layers.upper);
    let done = ctx.run(&test);
    assert_eq!(done.outcome().exit_code, Some(0), "{done:?}");
    let out = &done.stdout;
    assert!(out.contains(TREE_AFTER), "{out}");
    for seen in [
        "new 'new\\n'",
        "changed 'changed\\n'",
        "keep 'keep\\n'",
        "tree/sub/c 'c\\n'",
        "fresh/g 'g\\n'",
    ] {
        assert!(out.contains(&format!("{seen}\n")), "{seen}: {out}");
    }
    for write in ["create", "append", "unlink", "mkdir"] {
        assert!(out.contains(&format!("{write} EROFS\n")), "{write}: {out}");
    }
    // Written in a user namespace: the markers are user.* xattrs. `fresh` never was in
    // a lower layer, so it needs none.
    assert!(out.contains("opaque b'y'\n"), "{out}");
    assert!(out.contains("fresh opaque []\n"), "{out}");
    let mount = out.lines().find(|l| l.starts_with("mount ")).expect(out);
    assert!(mount.starts_with("mount ro,nosuid,nodev,"), "{mount}");
    let lowerdir = format!(
        "lowerdir={}:{}",
        layers.upper.display(),
        layers.lower.display()
    );
    for option in [lowerdir.as_str(), "userxattr"] {
        assert!(mount.contains(option), "{option} missing: {mount}");
    }
    assert!(!mount.contains("upperdir="), "{mount}");
    assert_eq!(snapshot(&layers.lower), cache);
    assert_eq!(snapshot(&layers.upper), upper_before);
}

#[test]
fn overlay_keeps_the_cache_and_hands_changes_to_the_next_container() {
    let ctx = TestContext::new("overlay");
    let layers = Layers::new(&ctx);
    // The cache was written by an earlier container of the same id range, and the
    // server hands the job's layer to the container's root.
    for dir in [&layers.lower, &layers.upper, &layers.work] {
        ci_runner::give_to_container(dir, &USERNS).unwrap();
    }
    install_then_test(&ctx, &layers, USERNS.host_ids().uid);
    ctx.assert_clean();
}

#[test]
fn rootless_overlay_keeps_the_cache_and_hands_changes_to_the_next_container() {
    let user = crate::rootless::user();
    let ctx = TestContext::rootless("rl-overlay", user);
    let layers = Layers::new(&ctx);
    chown_tree(&ctx.dir.path().join("venv"), user);
    install_then_test(&ctx, &layers, user.uid.as_raw());
    ctx.assert_clean();
}

/// What a rootless server's own files look like: everything belongs to its user.
fn chown_tree(path: &Path, user: &nix::unistd::User) {
    std::os::unix::fs::lchown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    if std::fs::symlink_metadata(path).unwrap().is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), user);
        }
    }
}
