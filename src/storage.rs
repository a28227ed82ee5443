//! Object storage: `s3://`, `gs://` and `az://` URLs (and their aliases) through the
//! `object_store` crate, for results datasets and inputs. A `file://` URL is a local path and
//! never reaches here (see [`local_path`]): a local dataset keeps its atomic renames.
//!
//! What it owns: a URL to a store (credentials from each cloud's standard environment variables
//! and, for S3, its shared credentials and config files; never logged), and the four blocking
//! operations the sink and the engine need: list a prefix's objects, download one to a file,
//! write one object whole (a PUT is atomic: a reader gets the old object or the new one,
//! whole), delete one. Each [`Remote`] runs its requests on a runtime of its own, so the sink's
//! thread and the engine's blocking tasks can call it without an async context; transient
//! failures (5xx, connection refused while a server restarts, timeouts) are retried by the
//! store's client with exponential backoff for up to [`StoreSettings::retry_for`] (5 minutes
//! unless `--store-retry-for` says otherwise), however many tries that takes.
//!
//! Conditional writes (create-if-absent, replace-if-unchanged: S3, GCS, Azure and MinIO all
//! have them) are what keeps two writers of one prefix apart: [`Remote::put`] with a
//! [`PutCondition`], and the [`Version`] every write and listing returns.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

/// The URL schemes read as object storage.
const SCHEMES: [&str; 8] = ["s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl"];

/// Added to a download's file name until it is complete.
pub const DOWNLOAD_SUFFIX: &str = ".download";

/// How a store is used: how long an operation rides out an outage, and how long a writer's
/// lease on a shard outlives its last renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    /// How long one operation is retried (exponential backoff) before it fails.
    pub retry_for: Duration,
    /// How long a shard's lease stays valid without renewal: another host takes a shard over
    /// only after this long without a word from its writer.
    pub lease_for: Duration,
}

impl Default for StoreSettings {
    fn default() -> StoreSettings {
        StoreSettings {
            retry_for: Duration::from_secs(300),
            lease_for: Duration::from_secs(60),
        }
    }
}

/// Which version of an object a write expects to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutCondition {
    /// Whatever is there (or nothing).
    Any,
    /// Nothing: the object must not exist yet.
    Absent,
    /// Exactly this version: nobody wrote the object since.
    Unchanged(Version),
}

/// A version of an object, as the store tells it (its ETag and, where kept, version id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(object_store::UpdateVersion);

/// What can go wrong with object storage. Messages name the URL, never a credential.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{url}: {reason}")]
    Url { url: String, reason: String },

    #[error("{url}: {cause}")]
    Store {
        url: String,
        cause: object_store::Error,
    },

    #[error("{path}: {cause}")]
    Local { path: PathBuf, cause: io::Error },

    /// A conditional write found another version than it expected: another writer wrote the
    /// object since (or created it first).
    #[error("{url} was written by another writer meanwhile")]
    Conflict { url: String },
}

/// Whether `text` is an object-storage URL (`s3://…`, `gs://…`, `az://…`).
pub fn is_url(text: &str) -> bool {
    text.split_once("://")
        .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

/// `url` as one spelling of each store: the scheme in lower case, `s3a://` (Hadoop's name
/// for S3) as `s3://`, so that two spellings of one prefix are one staging folder and one lease.
pub fn canonical_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let scheme = scheme.to_ascii_lowercase();
            let scheme = if scheme == "s3a" { "s3" } else { &scheme };
            format!("{scheme}://{rest}")
        }
        None => url.to_owned(),
    }
}

/// The local path of a `file://` URL, its trailing `/` kept (a dataset); `None` for any other
/// text.
pub fn local_path(text: &str) -> Option<Result<PathBuf, StorageError>> {
    let rest = text.strip_prefix("file://")?;
    let parsed = url::Url::parse(text)
        .ok()
        .and_then(|url| url.to_file_path().ok());
    Some(
        parsed
            .map(|path| {
                if rest.ends_with('/') {
                    PathBuf::from(format!("{}/", path.display()))
                } else {
                    path
                }
            })
            .ok_or_else(|| StorageError::Url {
                url: text.to_owned(),
                reason: "not a file URL of an absolute local path (file:///folder/…)".into(),
            }),
    )
}

/// Creates `dir` (its parent must exist) for this user alone, or takes it if it is already
/// this user's alone: a staging folder under the shared temporary directory, whose name others
/// can guess, must not be one they made (and could have filled with links).
pub fn create_private_dir(dir: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let local_error = |cause| StorageError::Local {
        path: dir.to_owned(),
        cause,
    };
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(local_error(error)),
    }
    let found = fs::symlink_metadata(dir).map_err(local_error)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !found.is_dir() || found.uid() != me || found.mode() & 0o077 != 0 {
        return Err(local_error(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "it exists but is not a folder of this user's alone (mode 0700); remove it or set TMPDIR elsewhere",
        )));
    }
    Ok(())
}

/// The name of a staging folder for `key` under the temporary directory: this user's, so that
/// two users' runs of one URL never share it.
pub fn staging_name(prefix: &str, key: &str) -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!(
        "{prefix}-{me}-{:016x}",
        xxhash_rust::xxh3::xxh3_64(key.as_bytes())
    ))
}

/// A private folder under the temporary directory for what is downloaded from a store (an
/// input, results being read), removed with what is in it when dropped.
pub struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// This user's folder for `key` (a URL) in this process.
    pub fn create(what: &str, key: &str) -> Result<Staging, StorageError> {
        let dir = staging_name(what, &format!("{key} {}", std::process::id()));
        create_private_dir(&dir)?;
        Ok(Staging { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Downloads the object at `url` into this folder, under its own name: its local path and
    /// size.
    pub fn download(&self, url: &str) -> Result<(PathBuf, u64), StorageError> {
        let (remote, name) = Remote::open_object(url)?;
        let local = self.dir.join(&name);
        let bytes = remote.download(&name, &local)?;
        Ok((local, bytes))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Nothing in it is kept: a folder left by a crash is this user's, in the temporary
        // directory, and taken again by the next run of the same URL in the same process id.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A folder of objects (a prefix) in a store.
#[derive(Clone)]
pub struct Remote {
    inner: Arc<Inner>,
}

struct Inner {
    store: Box<dyn ObjectStore>,
    prefix: ObjectPath,
    /// The URL as given, for messages (it holds no credential: those come from the
    /// environment).
    url: String,
    settings: StoreSettings,
    /// `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async context forbids; nothing is left running.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl fmt::Debug for Remote {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Remote")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// The store and prefix of a folder URL such as `s3://bucket/results/`, with the default
    /// [`StoreSettings`].
    pub fn open(url_text: &str) -> Result<Remote, StorageError> {
        Remote::open_with(url_text, StoreSettings::default())
    }

    /// [`Remote::open`] with these settings.
    pub fn open_with(url_text: &str, settings: StoreSettings) -> Result<Remote, StorageError> {
        crate::tls::install_crypto_provider();
        let url_text = &canonical_url(url_text);
        let url_error = |reason: String| StorageError::Url {
            url: url_text.to_owned(),
            reason,
        };
        let url = url::Url::parse(url_text).map_err(|error| url_error(error.to_string()))?;
        let store =
            build_store(&url, retry(settings.retry_for)).map_err(|cause| StorageError::Store {
                url: url_text.to_owned(),
                cause,
            })?;
        let prefix = ObjectPath::from_url_path(url.path())
            .map_err(|error| url_error(format!("its path: {error}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|cause| StorageError::Local {
                path: PathBuf::from(url_text),
                cause,
            })?;
        Ok(Remote {
            inner: Arc::new(Inner {
                store,
                prefix,
                url: url_text.to_owned(),
                settings,
                runtime: Some(runtime),
            }),
        })
    }

    /// The folder and the object name of an object URL such as `s3://bucket/in/requests.jsonl`.
    pub fn open_object(url_text: &str) -> Result<(Remote, String), StorageError> {
        let url_text = &canonical_url(url_text);
        let (folder, name) = url_text
            .rsplit_once('/')
            .filter(|(folder, name)| !name.is_empty() && folder.contains("://"))
            .ok_or_else(|| StorageError::Url {
                url: url_text.to_owned(),
                reason: "names no object (it ends in /)".into(),
            })?;
        Ok((Remote::open(&format!("{folder}/"))?, name.to_owned()))
    }

    pub fn url(&self) -> &str {
        &self.inner.url
    }

    pub fn settings(&self) -> StoreSettings {
        self.inner.settings
    }

    /// The URL of the object `name` in this folder.
    pub fn url_of(&self, name: &str) -> String {
        format!("{}/{name}", self.inner.url.trim_end_matches('/'))
    }

    fn block_on<T>(&self, work: impl Future<Output = T>) -> T {
        self.inner
            .runtime
            .as_ref()
            .expect("the runtime lives until the remote is dropped")
            .block_on(work)
    }

    fn store_error(&self, name: &str) -> impl Fn(object_store::Error) -> StorageError + '_ {
        let url = self.url_of(name);
        move |cause| match cause {
            object_store::Error::Precondition { .. }
            | object_store::Error::AlreadyExists { .. } => {
                StorageError::Conflict { url: url.clone() }
            }
            cause => StorageError::Store {
                url: url.clone(),
                cause,
            },
        }
    }

    /// The names of the objects directly in this folder.
    pub fn list(&self) -> Result<Vec<String>, StorageError> {
        Ok(self
            .list_versions()?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// The objects directly in this folder, with their versions.
    pub fn list_versions(&self) -> Result<Vec<(String, Version)>, StorageError> {
        let inner = &self.inner;
        let listed = self
            .block_on(inner.store.list_with_delimiter(Some(&inner.prefix)))
            .map_err(|cause| StorageError::Store {
                url: inner.url.clone(),
                cause,
            })?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|object| {
                let name = object.location.filename()?.to_owned();
                let version = object_store::UpdateVersion {
                    e_tag: object.e_tag,
                    version: object.version,
                };
                Some((name, Version(version)))
            })
            .collect())
    }

    /// The object `name` and its version; `None` if there is none.
    pub fn get(&self, name: &str) -> Result<Option<(Vec<u8>, Version)>, StorageError> {
        let location = self.inner.prefix.clone().join(name);
        self.block_on(async {
            let got = match self.inner.store.get(&location).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(error) => return Err(self.store_error(name)(error)),
            };
            let version = object_store::UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            let bytes = got.bytes().await.map_err(self.store_error(name))?;
            Ok(Some((bytes.to_vec(), Version(version))))
        })
    }

    /// Writes `bytes` as the object `name` if `condition` holds (else
    /// [`StorageError::Conflict`]); returns the version written.
    pub fn put(
        &self,
        name: &str,
        bytes: Vec<u8>,
        condition: &PutCondition,
    ) -> Result<Version, StorageError> {
        let location = self.inner.prefix.clone().join(name);
        let mode = match condition {
            PutCondition::Any => object_store::PutMode::Overwrite,
            PutCondition::Absent => object_store::PutMode::Create,
            PutCondition::Unchanged(Version(version)) => {
                object_store::PutMode::Update(version.clone())
            }
        };
        let written = self
            .block_on(
                self.inner
                    .store
                    .put_opts(&location, PutPayload::from(bytes), mode.into()),
            )
            .map_err(self.store_error(name))?;
        Ok(Version(written.into()))
    }

    /// Downloads the object `name` to `to` (written beside it first, then renamed, so that a
    /// torn download never passes for the object). Returns its size.
    pub fn download(&self, name: &str, to: &Path) -> Result<u64, StorageError> {
        let location = self.inner.prefix.clone().join(name);
        let partial = crate::paths::with_suffix(to, DOWNLOAD_SUFFIX);
        let local_error = |path: &Path| {
            let path = path.to_owned();
            move |cause| StorageError::Local {
                path: path.clone(),
                cause,
            }
        };
        let size = self.block_on(async {
            let got = self
                .inner
                .store
                .get(&location)
                .await
                .map_err(self.store_error(name))?;
            let mut file = File::create(&partial).map_err(local_error(&partial))?;
            let mut stream = got.into_stream();
            let mut size = 0;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(self.store_error(name))?;
                file.write_all(&chunk).map_err(local_error(&partial))?;
                size += chunk.len() as u64;
            }
            file.sync_all().map_err(local_error(&partial))?;
            Ok::<u64, StorageError>(size)
        })?;
        fs::rename(&partial, to).map_err(local_error(to))?;
        Ok(size)
    }

    pub fn delete(&self, name: &str) -> Result<(), StorageError> {
        let location = self.inner.prefix.clone().join(name);
        self.block_on(self.inner.store.delete(&location))
            .map_err(self.store_error(name))
    }
}

/// Retries bounded by time alone: a count of tries would end a 5-minute outage after seconds
/// of quick backoffs.
fn retry(retry_for: Duration) -> RetryConfig {
    RetryConfig {
        max_retries: usize::MAX,
        retry_timeout: retry_for,
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15)
                .min(retry_for / 4)
                .max(Duration::from_millis(100)),
            base: 2.0,
        },
    }
}

/// The store of `url`'s scheme, configured from the environment.
fn build_store(url: &url::Url, retry: RetryConfig) -> object_store::Result<Box<dyn ObjectStore>> {
    Ok(match url.scheme() {
        "gs" => Box::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .with_retry(retry)
                .build()?,
        ),
        "s3" | "s3a" => Box::new(s3_builder(url).with_retry(retry).build()?),
        _ => {
            let mut builder = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .with_retry(retry);
            if std::env::var("AZURE_STORAGE_ENDPOINT")
                .is_ok_and(|endpoint| endpoint.starts_with("http://"))
            {
                builder = builder.with_allow_http(true);
            }
            Box::new(builder.build()?)
        }
    })
}

/// S3 from `AWS_*` variables, then the shared credentials and config files (`AWS_PROFILE`, or
/// `default`) for what the variables leave out. An endpoint given as `http://` (a local or
/// in-cluster S3-protocol server) is allowed plain HTTP.
fn s3_builder(url: &url::Url) -> object_store::aws::AmazonS3Builder {
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str());
    let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
    let home = env("HOME").map(PathBuf::from);
    if env("AWS_ACCESS_KEY_ID").is_none() {
        let file = env("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|home| home.join(".aws/credentials")));
        let section = file.and_then(|file| ini_section(&file, &profile));
        if let Some(section) = section {
            for (key, value) in section {
                builder = match key.as_str() {
                    "aws_access_key_id" => builder.with_access_key_id(value),
                    "aws_secret_access_key" => builder.with_secret_access_key(value),
                    "aws_session_token" => builder.with_token(value),
                    _ => builder,
                };
            }
        }
    }
    if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
        let file = env("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|home| home.join(".aws/config")));
        let section_name = if profile == "default" {
            profile.clone()
        } else {
            format!("profile {profile}")
        };
        let region = file
            .and_then(|file| ini_section(&file, &section_name))
            .and_then(|section| section.into_iter().find(|(key, _)| key == "region"));
        if let Some((_, region)) = region {
            builder = builder.with_region(region);
        }
    }
    let endpoint = env("AWS_ENDPOINT_URL_S3")
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| env("AWS_ENDPOINT"));
    if endpoint.is_some_and(|endpoint| endpoint.starts_with("http://")) {
        builder = builder.with_allow_http(true);
    }
    builder
}

/// The `key = value` pairs of section `[name]` of an INI file (the AWS files' format); `None`
/// if the file or the section is missing.
fn ini_section(path: &Path, name: &str) -> Option<Vec<(String, String)>> {
    let text = fs::read_to_string(path).ok()?;
    let mut found = None;
    let mut in_section = false;
    for line in text.lines().map(str::trim) {
        if let Some(header) = line
            .strip_prefix('[')
            .and_then(|line| line.strip_suffix(']'))
        {
            in_section = header.trim() == name;
            if in_section {
                found.get_or_insert_with(Vec::new);
            }
        } else if in_section {
            if let Some((key, value)) = line.split_once('=') {
                if let Some(pairs) = found.as_mut() {
                    pairs.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths() {
        assert!(is_url("s3://bucket/results/"));
        assert!(is_url("GS://bucket/in.jsonl"));
        assert!(is_url("az://container/x/"));
        assert!(!is_url("results/"));
        assert!(!is_url("file:///tmp/results/"));
        assert!(!is_url("http://127.0.0.1:11434"));
        assert_eq!(
            local_path("file:///tmp/results/").map(|path| path.ok()),
            Some(Some(PathBuf::from("/tmp/results/")))
        );
        assert_eq!(
            local_path("file:///tmp/in.jsonl").map(|path| path.ok()),
            Some(Some(PathBuf::from("/tmp/in.jsonl")))
        );
        assert!(local_path("file://host/x").is_some_and(|path| path.is_err()));
        assert!(local_path("/tmp/x").is_none());
    }

    #[test]
    fn the_profile_section_of_a_credentials_file_is_read() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let file = dir.path().join("credentials");
        fs::write(
            &file,
            "[default]\naws_access_key_id = A\n\n[work]\nAWS_Access_Key_Id=B\naws_secret_access_key = s=c\n",
        )
        .expect("written");
        assert_eq!(
            ini_section(&file, "work"),
            Some(vec![
                ("aws_access_key_id".to_owned(), "B".to_owned()),
                ("aws_secret_access_key".to_owned(), "s=c".to_owned()),
            ])
        );
        assert_eq!(ini_section(&file, "missing"), None);
    }
}
