//! GPU figures for the progress line and the summary: local NVIDIA GPUs through NVML, and the
//! models an Ollama backend has loaded (`GET /api/ps`, so a remote GPU is visible too).
//!
//! NVML is loaded at run time. Without a driver (a laptop, CI, a remote backend) the monitor
//! says so once and reports nothing; it never fails a run.

use nvml_wrapper::Nvml;
use serde::Deserialize;

use crate::backend::http::HttpBackend;
use crate::stats::{GpuFigures, LoadedModel};

/// Environment variable naming the NVML library to load, for drivers installed outside the
/// loader's search path. A path that does not load means "no GPU".
pub const NVML_LIBRARY_ENV: &str = "BATCHFLOW_NVML_LIBRARY";

/// Samples local GPUs, if NVML could be loaded.
pub struct GpuMonitor {
    nvml: Option<Nvml>,
}

impl GpuMonitor {
    /// Loads NVML (this can take a moment on a real driver: call it off the async runtime).
    pub fn load() -> GpuMonitor {
        let loaded = match std::env::var_os(NVML_LIBRARY_ENV) {
            Some(path) => Nvml::builder().lib_path(&path).init(),
            None => Nvml::init(),
        };
        match loaded {
            Ok(nvml) => GpuMonitor { nvml: Some(nvml) },
            Err(error) => {
                tracing::debug!("NVML is not available: {error}.");
                GpuMonitor { nvml: None }
            }
        }
    }

    /// A monitor that reports no GPU.
    pub fn disabled() -> GpuMonitor {
        GpuMonitor { nvml: None }
    }

    pub fn is_available(&self) -> bool {
        self.nvml.is_some()
    }

    /// Memory and utilisation of every GPU; `None` without NVML. A GPU that fails to answer is
    /// left out rather than failing the sample.
    pub fn sample(&self) -> Option<Vec<GpuFigures>> {
        let nvml = self.nvml.as_ref()?;
        let count = nvml.device_count().ok()?;
        let figures = (0..count)
            .filter_map(|index| {
                let device = nvml.device_by_index(index).ok()?;
                let memory = device.memory_info().ok()?;
                Some(GpuFigures {
                    name: device.name().unwrap_or_else(|_| format!("GPU {index}")),
                    memory_used_bytes: memory.used,
                    memory_total_bytes: memory.total,
                    utilization_percent: device
                        .utilization_rates()
                        .map(|rates| rates.gpu)
                        .unwrap_or(0),
                })
            })
            .collect();
        Some(figures)
    }
}

#[derive(Debug, Deserialize)]
struct RunningModels {
    #[serde(default)]
    models: Vec<RunningModel>,
}

/// A model an Ollama backend has loaded, as `/api/ps` tells it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct RunningModel {
    pub name: String,
    /// Its whole size in memory; more than `size_vram` when part of it runs on the CPU.
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub size_vram: u64,
}

/// A backend that does not answer `/api/ps` this fast is skipped for this sample.
const PS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The models an Ollama backend has loaded; empty when it does not answer `/api/ps`.
pub async fn loaded_models(backend: &HttpBackend) -> Vec<LoadedModel> {
    running_models(backend)
        .await
        .into_iter()
        .map(|model| LoadedModel {
            name: model.name,
            size_vram_bytes: model.size_vram,
            size_bytes: model.size,
        })
        .collect()
}

/// `/api/ps` whole; empty when the backend does not answer it (not Ollama, or too slow).
pub async fn running_models(backend: &HttpBackend) -> Vec<RunningModel> {
    let Ok((200, body)) = backend.get_within("/api/ps", PS_TIMEOUT).await else {
        return Vec::new();
    };
    serde_json::from_slice::<RunningModels>(&body)
        .map(|running| running.models)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_that_does_not_load_means_no_gpu() {
        let monitor = GpuMonitor {
            nvml: Nvml::builder()
                .lib_path("/nonexistent/libnvidia-ml.so.1".as_ref())
                .init()
                .ok(),
        };
        assert!(!monitor.is_available());
        assert_eq!(monitor.sample(), None);
    }
}
