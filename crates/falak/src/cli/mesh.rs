//! `falak mesh current | use`: which mesh the CLI talks to, and how it finds it.
//!
//! A mesh dir is where `falak up` keeps a mesh (its `--data-dir`, `.falak` by default): a dir
//! per node, the credentials, and `mesh.json` while the mesh runs. A command that talks to a
//! node takes the first of:
//!
//! 1. `--mesh DIR` (or `FALAK_MESH`);
//! 2. `.falak/mesh.json` in the current directory or the nearest directory above it that has
//!    one, so every command works from anywhere inside a project that runs a mesh;
//! 3. the current mesh, as kubectl's current context: the file
//!    `$XDG_CONFIG_HOME/falak/current-mesh` (else `$HOME/.config/falak/current-mesh`) holds
//!    the absolute path of a mesh dir. `falak up` writes it when it runs a mesh, `falak mesh
//!    use DIR` sets it.
//!
//! `--api`, `--token`, `--ca` and `--deployer-key` override what the mesh gives; with `--api`
//! or `--ca` a command needs no mesh. The current mesh's credentials go only to its own nodes:
//! with an `--api` that is not one of them, it is not used.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::Global;
use super::up::MESH_JSON;

/// Which mesh the CLI uses.
#[derive(Debug, clap::Subcommand)]
pub enum MeshCommand {
    /// Print the mesh dir commands use from here, and how it was found.
    Current,
    /// Make DIR (a mesh dir, or a directory holding `.falak`) the current mesh: the one used
    /// wherever no `.falak/mesh.json` is found in the current directory or above it.
    Use {
        /// The mesh dir (`falak up`'s `--data-dir`), or the directory `falak up` ran in.
        dir: PathBuf,
    },
}

/// The directory under a project that holds its mesh, as `falak up` makes it by default.
pub const DEFAULT_MESH_DIR: &str = ".falak";
/// The per-user file naming the current mesh, in [`config_dir`].
pub const CURRENT_MESH_FILE: &str = "current-mesh";

/// A mesh dir and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshDir {
    /// Absolute.
    pub dir: PathBuf,
    pub found: Found,
}

/// How a mesh dir was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// `--mesh DIR` or `FALAK_MESH`.
    Flag,
    /// `.falak/mesh.json` in the directory the search started from (`from`) or above it.
    Ancestor { from: PathBuf },
    /// The current-mesh file `file` names it.
    CurrentMesh { file: PathBuf },
}

impl MeshDir {
    /// Its `mesh.json`, which exists while its mesh runs.
    pub fn mesh_file(&self) -> PathBuf {
        self.dir.join(MESH_JSON)
    }

    /// How it was found, in words.
    pub fn how(&self) -> String {
        match &self.found {
            Found::Flag => "named by --mesh (or FALAK_MESH)".to_owned(),
            Found::Ancestor { from } if self.dir.parent() == Some(from.as_path()) => {
                format!("{DEFAULT_MESH_DIR}/{MESH_JSON} in the current directory")
            }
            Found::Ancestor { from } => {
                format!("the nearest {DEFAULT_MESH_DIR}/{MESH_JSON} above the current directory {}", from.display())
            }
            Found::CurrentMesh { file } => format!("the current mesh, named in {}", file.display()),
        }
    }
}

/// Where to look for the mesh.
#[derive(Debug, Clone, Copy)]
pub struct Search<'a> {
    /// `--mesh DIR` or `FALAK_MESH`.
    pub flag: Option<&'a Path>,
    /// Where the walk up starts: the current directory (absolute).
    pub start: &'a Path,
    /// The per-user config dir ([`config_dir`]); `None` when there is none.
    pub config_dir: Option<&'a Path>,
}

/// The mesh a command uses (see the module documentation), or an error that says where it
/// looked and what to do.
pub fn locate(search: Search<'_>) -> anyhow::Result<MeshDir> {
    if let Some(flag) = search.flag {
        let dir = mesh_dir_in(&absolute(flag)?)
            .with_context(|| format!("--mesh (or FALAK_MESH) {} names no mesh", flag.display()))?;
        require_running(&dir, "named by --mesh or FALAK_MESH")?;
        return Ok(MeshDir { dir, found: Found::Flag });
    }
    let mut stopped = Vec::new();
    for ancestor in search.start.ancestors() {
        let dir = ancestor.join(DEFAULT_MESH_DIR);
        if dir.join(MESH_JSON).is_file() {
            return Ok(MeshDir { dir, found: Found::Ancestor { from: search.start.to_owned() } });
        }
        if dir.is_dir() && looks_like_a_mesh_dir(&dir) {
            stopped.push(dir);
        }
    }
    let looked = format!("no {DEFAULT_MESH_DIR}/{MESH_JSON} in {} or above it", search.start.display());
    let stopped: String = stopped
        .iter()
        .map(|dir| {
            format!(
                "; {} holds no {MESH_JSON}: its mesh is not running (`falak up` in {} starts it again)",
                dir.display(),
                dir.parent().unwrap_or(dir).display()
            )
        })
        .collect();
    const WHAT_TO_DO: &str =
        "run `falak up` here, cd into a mesh directory, or `falak mesh use DIR` (or pass --api URL and --ca FILE)";
    let Some(config_dir) = search.config_dir else {
        bail!(
            "no mesh found: {looked}, and no current mesh (neither XDG_CONFIG_HOME nor HOME is set){stopped}; {WHAT_TO_DO}"
        );
    };
    let file = config_dir.join(CURRENT_MESH_FILE);
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "no mesh found: {looked}, and no current mesh ({} does not exist){stopped}; {WHAT_TO_DO}",
                file.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read the current mesh file {}", file.display())),
    };
    let named = PathBuf::from(text.trim_end_matches(['\n', '\r']));
    if named.as_os_str().is_empty() || !named.is_absolute() {
        bail!(
            "the current mesh file {} does not hold an absolute path (it holds {:?}); set it with `falak mesh use DIR`",
            file.display(),
            text.trim()
        );
    }
    if !named.is_dir() {
        bail!(
            "the current mesh file {} names {}, which does not exist (removed?); run `falak up` to start a mesh, \
             `falak mesh use DIR` to name another, or remove {}",
            file.display(),
            named.display(),
            file.display()
        );
    }
    require_running(&named, &format!("the current mesh, named in {}", file.display()))?;
    Ok(MeshDir { dir: named, found: Found::CurrentMesh { file } })
}

/// The per-user config dir: `$XDG_CONFIG_HOME/falak`, else `$HOME/.config/falak`; `None`
/// when neither is set to an absolute path.
pub fn config_dir() -> Option<PathBuf> {
    config_dir_from(std::env::var_os("XDG_CONFIG_HOME"), std::env::var_os("HOME"))
}

fn config_dir_from(xdg_config_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    // The XDG base directory spec: a relative XDG_CONFIG_HOME is ignored.
    let absolute = |value: Option<OsString>| value.map(PathBuf::from).filter(|p| p.is_absolute());
    absolute(xdg_config_home).or_else(|| absolute(home).map(|home| home.join(".config"))).map(|dir| dir.join("falak"))
}

/// Make `dir` the current mesh: write its absolute path to the current-mesh file in
/// `config_dir`, whole or not at all. Returns the file.
pub fn set_current(config_dir: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    debug_assert!(dir.is_absolute(), "the current mesh is an absolute path");
    fs::create_dir_all(config_dir).with_context(|| format!("cannot create {}", config_dir.display()))?;
    let file = config_dir.join(CURRENT_MESH_FILE);
    let text = format!("{}\n", dir.display());
    super::up::write_atomic(&file, text.as_bytes(), 0o644)?;
    Ok(file)
}

/// `falak up` ran the mesh in `dir`: make it the current mesh. The file, or `None` when there
/// is no config dir to keep it in.
pub fn adopt(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Some(config_dir) = config_dir() else { return Ok(None) };
    set_current(&config_dir, dir).map(Some)
}

/// `falak up` removed the mesh in `dir`: forget it if it is the current mesh.
pub fn forget(dir: &Path) {
    let Some(config_dir) = config_dir() else { return };
    let file = config_dir.join(CURRENT_MESH_FILE);
    let named = fs::read_to_string(&file).ok().map(|text| PathBuf::from(text.trim_end_matches(['\n', '\r'])));
    if named.as_deref() == Some(dir) {
        let _ = fs::remove_file(&file);
    }
}

/// The mesh a command that talks to a node uses: `None` when none is found but `--api` or
/// `--ca` lets it go on without one, and when the current mesh is found but `--api` names
/// a node that is not one of its own (its credentials are not sent elsewhere).
pub fn for_command(global: &Global) -> anyhow::Result<Option<MeshDir>> {
    let start = std::env::current_dir().context("cannot read the current directory")?;
    let config_dir = config_dir();
    let search = Search { flag: global.mesh.as_deref(), start: &start, config_dir: config_dir.as_deref() };
    let mesh = match locate(search) {
        Ok(mesh) => mesh,
        Err(_) if global.mesh.is_none() && (global.api.is_some() || global.ca.is_some()) => return Ok(None),
        Err(error) => return Err(error),
    };
    if let (Found::CurrentMesh { .. }, Some(api)) = (&mesh.found, global.api.as_deref()) {
        let nodes = super::resolve_apis(None, Some(&mesh.mesh_file())).unwrap_or_default();
        if !nodes.iter().any(|url| same_url(url, api)) {
            return Ok(None);
        }
    }
    Ok(Some(mesh))
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

pub fn run(global: &Global, command: MeshCommand) -> anyhow::Result<()> {
    match command {
        MeshCommand::Current => {
            let start = std::env::current_dir().context("cannot read the current directory")?;
            let config_dir = config_dir();
            let mesh =
                locate(Search { flag: global.mesh.as_deref(), start: &start, config_dir: config_dir.as_deref() })?;
            if global.output == super::output::Format::Json {
                let (found, file) = match &mesh.found {
                    Found::Flag => ("flag", None),
                    Found::Ancestor { .. } => ("ancestor", None),
                    Found::CurrentMesh { file } => ("current-mesh", Some(file)),
                };
                let value = serde_json::json!({
                    "dir": mesh.dir,
                    "mesh_file": mesh.mesh_file(),
                    "found": found,
                    "current_mesh_file": file,
                });
                return super::output::print_json(&value);
            }
            println!("{}", mesh.dir.display());
            eprintln!("{}", mesh.how());
            Ok(())
        }
        MeshCommand::Use { dir } => {
            let given = fs::canonicalize(&dir).with_context(|| format!("cannot use {}", dir.display()))?;
            let mesh = mesh_dir_in(&given)?;
            let config_dir = config_dir().context(
                "cannot record the current mesh: neither XDG_CONFIG_HOME nor HOME is set; pass --mesh DIR or set FALAK_MESH instead",
            )?;
            let file = set_current(&config_dir, &mesh)?;
            println!("current mesh: {} (in {})", mesh.display(), file.display());
            if !mesh.join(MESH_JSON).is_file() {
                println!("note: its mesh is not running now; `falak up --data-dir {}` starts it again", mesh.display());
            }
            let start = std::env::current_dir().context("cannot read the current directory")?;
            let here = locate(Search { flag: global.mesh.as_deref(), start: &start, config_dir: Some(&config_dir) });
            if let Ok(other) = here
                && other.dir != mesh
            {
                println!("note: from here commands use {} instead: {}", other.dir.display(), other.how());
            }
            Ok(())
        }
    }
}

/// The mesh dir `dir` names: `dir` itself when it is one, else its `.falak` when that is one.
fn mesh_dir_in(dir: &Path) -> anyhow::Result<PathBuf> {
    if looks_like_a_mesh_dir(dir) {
        return Ok(dir.to_owned());
    }
    let default = dir.join(DEFAULT_MESH_DIR);
    if default.is_dir() && looks_like_a_mesh_dir(&default) {
        return Ok(default);
    }
    bail!(
        "{} is not a mesh dir: it holds no {MESH_JSON} or credentials, and no {DEFAULT_MESH_DIR}/ that does \
         (a mesh dir is where `falak up` keeps a mesh: its --data-dir, {DEFAULT_MESH_DIR} by default)",
        dir.display()
    )
}

/// Whether `dir` is where `falak up` keeps a mesh, running (`mesh.json`) or not (its
/// credentials stay).
fn looks_like_a_mesh_dir(dir: &Path) -> bool {
    dir.join(MESH_JSON).is_file() || dir.join(falak_node::mesh_files::CREDENTIALS_DIR).is_dir()
}

/// An error unless the mesh in `dir` runs (its `mesh.json` is there); `which` says how the
/// mesh was named.
fn require_running(dir: &Path, which: &str) -> anyhow::Result<()> {
    if dir.join(MESH_JSON).is_file() {
        return Ok(());
    }
    bail!(
        "the mesh in {} is not running: it holds no {MESH_JSON} ({which}); start it again with \
         `falak up --data-dir {}`, or name another with `falak mesh use DIR`",
        dir.display(),
        dir.display()
    )
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mesh dir as a running `falak up` leaves it.
    fn running_mesh(dir: &Path) {
        fs::create_dir_all(dir.join("credentials")).unwrap();
        fs::write(dir.join(MESH_JSON), r#"{ "nodes": [{ "api_url": "https://127.0.0.1:7070" }] }"#).unwrap();
    }

    fn search<'a>(start: &'a Path, config_dir: &'a Path) -> Search<'a> {
        Search { flag: None, start, config_dir: Some(config_dir) }
    }

    fn error(result: anyhow::Result<MeshDir>) -> String {
        format!("{:#}", result.unwrap_err())
    }

    #[test]
    fn the_mesh_is_found_from_any_directory_below_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (project, config) = (tmp.path().join("project"), tmp.path().join("config"));
        running_mesh(&project.join(".falak"));
        let deep = project.join("src/a/b");
        fs::create_dir_all(&deep).unwrap();

        let here = locate(search(&project, &config)).unwrap();
        assert_eq!(here.dir, project.join(".falak"));
        assert_eq!(here.how(), ".falak/mesh.json in the current directory");
        let below = locate(search(&deep, &config)).unwrap();
        assert_eq!(below, MeshDir { dir: project.join(".falak"), found: Found::Ancestor { from: deep.clone() } });
        assert!(below.how().contains("above the current directory"), "{}", below.how());
        // From inside the mesh dir itself too.
        let inside = project.join(".falak/node-1");
        fs::create_dir_all(&inside).unwrap();
        assert_eq!(locate(search(&inside, &config)).unwrap().dir, project.join(".falak"));

        // The nearest one wins.
        running_mesh(&project.join("src/.falak"));
        assert_eq!(locate(search(&deep, &config)).unwrap().dir, project.join("src/.falak"));
    }

    #[test]
    fn elsewhere_the_current_mesh_file_names_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (mesh, config, elsewhere) = (tmp.path().join("m"), tmp.path().join("config"), tmp.path().join("x"));
        running_mesh(&mesh);
        fs::create_dir_all(&elsewhere).unwrap();

        let nothing = error(locate(search(&elsewhere, &config)));
        assert!(nothing.starts_with("no mesh found: no .falak/mesh.json in "), "{nothing}");
        assert!(nothing.contains(&format!("{} or above it", elsewhere.display())), "{nothing}");
        assert!(nothing.contains(&format!("{} does not exist", config.join("current-mesh").display())), "{nothing}");
        assert!(
            nothing.contains("run `falak up` here, cd into a mesh directory, or `falak mesh use DIR`"),
            "{nothing}"
        );
        let no_home = error(locate(Search { flag: None, start: &elsewhere, config_dir: None }));
        assert!(no_home.contains("neither XDG_CONFIG_HOME nor HOME is set"), "{no_home}");

        let file = set_current(&config, &mesh).unwrap();
        assert_eq!(file, config.join("current-mesh"));
        assert_eq!(fs::read_to_string(&file).unwrap(), format!("{}\n", mesh.display()));
        let found = locate(search(&elsewhere, &config)).unwrap();
        assert_eq!(found, MeshDir { dir: mesh.clone(), found: Found::CurrentMesh { file: file.clone() } });
        assert_eq!(found.how(), format!("the current mesh, named in {}", file.display()));

        // A mesh above the current directory comes first; --mesh before both.
        let project = tmp.path().join("p");
        running_mesh(&project.join(".falak"));
        assert_eq!(locate(search(&project, &config)).unwrap().dir, project.join(".falak"));
        let flagged = Search { flag: Some(&project), ..search(&elsewhere, &config) };
        assert_eq!(locate(flagged).unwrap(), MeshDir { dir: project.join(".falak"), found: Found::Flag });
    }

    #[test]
    fn a_stale_current_mesh_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (mesh, config, elsewhere) = (tmp.path().join("m"), tmp.path().join("config"), tmp.path().join("x"));
        running_mesh(&mesh);
        fs::create_dir_all(&elsewhere).unwrap();
        let file = set_current(&config, &mesh).unwrap();

        // The mesh stopped: its dir stays, mesh.json goes.
        fs::remove_file(mesh.join(MESH_JSON)).unwrap();
        let stopped = error(locate(search(&elsewhere, &config)));
        assert!(
            stopped.starts_with(&format!(
                "the mesh in {} is not running: it holds no mesh.json (the current mesh, named in {})",
                mesh.display(),
                file.display()
            )),
            "{stopped}"
        );
        assert!(stopped.contains(&format!("`falak up --data-dir {}`", mesh.display())), "{stopped}");

        // The mesh dir is gone.
        fs::remove_dir_all(&mesh).unwrap();
        let gone = error(locate(search(&elsewhere, &config)));
        assert!(
            gone.starts_with(&format!(
                "the current mesh file {} names {}, which does not exist",
                file.display(),
                mesh.display()
            )),
            "{gone}"
        );
        assert!(gone.contains("`falak mesh use DIR`"), "{gone}");

        fs::write(&file, "relative/dir\n").unwrap();
        let relative = error(locate(search(&elsewhere, &config)));
        assert!(relative.contains("does not hold an absolute path"), "{relative}");
    }

    #[test]
    fn a_stopped_mesh_on_the_way_up_is_named_when_nothing_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let project = tmp.path().join("p");
        running_mesh(&project.join(".falak"));
        fs::remove_file(project.join(".falak").join(MESH_JSON)).unwrap();
        let error = error(locate(search(&project, &tmp.path().join("config"))));
        assert!(
            error
                .contains(&format!("{} holds no mesh.json: its mesh is not running", project.join(".falak").display())),
            "{error}"
        );
    }

    #[test]
    fn use_takes_a_mesh_dir_or_the_directory_above_it() {
        let tmp = tempfile::tempdir().unwrap();
        let project = tmp.path().join("p");
        running_mesh(&project.join(".falak"));
        assert_eq!(mesh_dir_in(&project).unwrap(), project.join(".falak"));
        assert_eq!(mesh_dir_in(&project.join(".falak")).unwrap(), project.join(".falak"));
        let error = format!("{:#}", mesh_dir_in(tmp.path()).unwrap_err());
        assert!(error.contains("is not a mesh dir"), "{error}");
    }

    #[test]
    fn the_config_dir_follows_xdg_then_home() {
        let dir = |xdg: Option<&str>, home: Option<&str>| config_dir_from(xdg.map(Into::into), home.map(Into::into));
        assert_eq!(dir(Some("/x"), Some("/h")), Some(PathBuf::from("/x/falak")));
        assert_eq!(dir(None, Some("/h")), Some(PathBuf::from("/h/.config/falak")));
        assert_eq!(
            dir(Some("relative"), Some("/h")),
            Some(PathBuf::from("/h/.config/falak")),
            "a relative XDG_CONFIG_HOME is ignored"
        );
        assert_eq!(dir(Some(""), None), None);
        assert_eq!(dir(None, None), None);
    }
}
