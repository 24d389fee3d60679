//! `/api/v1/images`: the images of the node the request reaches — pull from a registry (its
//! peers first for the blobs), import an archive streamed in the request body, list, inspect,
//! remove a name.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::action::{Action, Reply};
use crate::error::ApiError;
use crate::routes::{ApiPath, ApiQuery, Body, Ctx};

/// The largest archive `POST /api/v1/images/import` takes (streamed to the node's disk).
pub const MAX_IMPORT_BYTES: u64 = 8 << 30;

/// What the API asks of the node's images.
#[derive(Debug)]
pub enum ImageAction {
    Pull {
        reference: String,
        reply: Reply<ImagePulled>,
    },
    /// `body` is the archive, read by the node as it arrives (at most [`MAX_IMPORT_BYTES`]).
    Import {
        body: axum::body::Body,
        name: Option<String>,
        reply: Reply<Vec<ImageImported>>,
    },
    List {
        reply: Reply<Vec<ImageInfo>>,
    },
    Inspect {
        image: String,
        reply: Reply<ImageDetails>,
    },
    Remove {
        image: String,
        reply: Reply<ImageRemoved>,
    },
}

impl ImageAction {
    pub fn name(&self) -> &'static str {
        match self {
            ImageAction::Pull { .. } => "pull_image",
            ImageAction::Import { .. } => "import_image",
            ImageAction::List { .. } => "list_images",
            ImageAction::Inspect { .. } => "inspect_image",
            ImageAction::Remove { .. } => "remove_image",
        }
    }

    pub fn fail(self, error: ApiError) {
        fn send<T>(reply: Reply<T>, error: ApiError) {
            let _ = reply.send(Err(error));
        }
        match self {
            ImageAction::Pull { reply, .. } => send(reply, error),
            ImageAction::Import { reply, .. } => send(reply, error),
            ImageAction::List { reply } => send(reply, error),
            ImageAction::Inspect { reply, .. } => send(reply, error),
            ImageAction::Remove { reply, .. } => send(reply, error),
        }
    }
}

/// `POST /api/v1/images/pull` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullImage {
    /// `127.0.0.1:5000/app:v1`, `alpine@sha256:<hex>`.
    pub reference: String,
}

/// The answer to a pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePulled {
    pub name: String,
    /// This platform's image manifest, `sha256:<hex>`.
    pub digest: String,
    /// Blobs (and their bytes) that came from the registry.
    pub registry_blobs: usize,
    pub registry_bytes: u64,
    /// Blobs that came from peers.
    pub peer_blobs: usize,
    /// Blobs this node already held.
    pub held_blobs: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageImported {
    pub digest: String,
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub digest: String,
    pub names: Vec<String>,
    pub size: u64,
    pub layers: usize,
    pub platform: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLayer {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDetails {
    pub image: ImageInfo,
    pub config_digest: String,
    pub layers: Vec<ImageLayer>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRemoved {
    pub digest: String,
    /// The names removed; the blobs go once nothing uses them.
    pub names: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ImportQuery {
    name: Option<String>,
}

pub(crate) async fn pull(State(ctx): State<Ctx>, body: Body) -> Result<Json<ImagePulled>, ApiError> {
    let request: PullImage = body.parse()?;
    if request.reference.trim().is_empty() {
        return Err(ApiError::invalid("reference is empty; name an image, e.g. 127.0.0.1:5000/app:v1"));
    }
    let reference = request.reference;
    ctx.ask(|reply| Action::Image(ImageAction::Pull { reference, reply })).await.map(Json)
}

pub(crate) async fn import(
    State(ctx): State<Ctx>,
    ApiQuery(query): ApiQuery<ImportQuery>,
    request: Request,
) -> Result<(StatusCode, Json<Vec<ImageImported>>), ApiError> {
    if crate::function::declared_length(request.headers()).is_some_and(|n| n > MAX_IMPORT_BYTES) {
        return Err(ApiError::too_large(format!("an image archive is at most {MAX_IMPORT_BYTES} bytes")));
    }
    let body = request.into_body();
    let name = query.name;
    let imported = ctx.ask(|reply| Action::Image(ImageAction::Import { body, name, reply })).await?;
    Ok((StatusCode::CREATED, Json(imported)))
}

pub(crate) async fn list(State(ctx): State<Ctx>) -> Result<Json<Vec<ImageInfo>>, ApiError> {
    ctx.ask(|reply| Action::Image(ImageAction::List { reply })).await.map(Json)
}

pub(crate) async fn inspect(
    State(ctx): State<Ctx>,
    ApiPath(image): ApiPath<String>,
) -> Result<Json<ImageDetails>, ApiError> {
    ctx.ask(|reply| Action::Image(ImageAction::Inspect { image, reply })).await.map(Json)
}

pub(crate) async fn remove(
    State(ctx): State<Ctx>,
    ApiPath(image): ApiPath<String>,
) -> Result<Json<ImageRemoved>, ApiError> {
    ctx.ask(|reply| Action::Image(ImageAction::Remove { image, reply })).await.map(Json)
}
