//! Where a workspace's APIs live: region base URLs, overrides, and the v2 URL derived from v1.

use super::CioError;
use crate::config::{CustomerIoSettings, DeliveryApi, Region};

/// US region (customerio-node `regions`, FACTS).
pub const US_TRACK_URL: &str = "https://track.customer.io/api/v1";
pub const US_APP_URL: &str = "https://api.customer.io/v1";
/// EU region.
pub const EU_TRACK_URL: &str = "https://track-eu.customer.io/api/v1";
pub const EU_APP_URL: &str = "https://api-eu.customer.io/v1";
/// The Data Pipelines API, US and EU.
pub const US_PIPELINES_URL: &str = "https://cdp.customer.io/v1";
pub const EU_PIPELINES_URL: &str = "https://cdp-eu.customer.io/v1";

/// The three base URLs the client talks to, without trailing slashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrls {
    /// `.../api/v1`
    pub track_v1: String,
    /// `.../api/v2`: the track URL with its `/api/v1` replaced (docs/reference.md §3).
    pub track_v2: String,
    /// `.../v1` of the App API.
    pub app: String,
    /// `.../v1` of the Data Pipelines API, when `customerio.api` is `pipelines`.
    pub pipelines: Option<String>,
}

impl BaseUrls {
    pub fn resolve(settings: &CustomerIoSettings) -> Result<Self, CioError> {
        let (track_default, app_default) = match settings.region {
            Region::Us => (Some(US_TRACK_URL), Some(US_APP_URL)),
            Region::Eu => (Some(EU_TRACK_URL), Some(EU_APP_URL)),
            // The sandbox has no fixed address: whoever starts one says where it is.
            Region::Sandbox => (None, None),
        };
        let track = pick(&settings.track_url, track_default, "customerio.track_url")?;
        let app = pick(&settings.app_url, app_default, "customerio.app_url")?;
        let track_v2 = match track.strip_suffix("/api/v1") {
            Some(root) => format!("{root}/api/v2"),
            None => {
                return Err(CioError::invalid(format!(
                    "customerio.track_url {track:?} must end with /api/v1 (the v2 URL is derived from it)"
                )));
            }
        };
        let pipelines = match settings.api {
            DeliveryApi::Track => None,
            DeliveryApi::Pipelines => {
                let default = match settings.region {
                    Region::Us => Some(US_PIPELINES_URL),
                    Region::Eu => Some(EU_PIPELINES_URL),
                    Region::Sandbox => None,
                };
                Some(pick(
                    &settings.pipelines_url,
                    default,
                    "customerio.pipelines_url",
                )?)
            }
        };
        Ok(Self {
            track_v1: track,
            track_v2,
            app,
            pipelines,
        })
    }
}

fn pick(configured: &Option<String>, default: Option<&str>, key: &str) -> Result<String, CioError> {
    let value = match (configured.as_deref(), default) {
        (Some(url), _) => url,
        (None, Some(url)) => url,
        (None, None) => {
            return Err(CioError::invalid(format!(
                "{key} is required when customerio.region is sandbox"
            )));
        }
    };
    let parsed =
        url::Url::parse(value).map_err(|e| CioError::invalid(format!("{key} {value:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(CioError::invalid(format!(
            "{key} {value:?}: must be an http or https URL"
        )));
    }
    Ok(value.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(region: Region, track: Option<&str>, app: Option<&str>) -> CustomerIoSettings {
        CustomerIoSettings {
            region,
            track_url: track.map(str::to_string),
            app_url: app.map(str::to_string),
            site_id: None,
            api_key: None,
            app_api_key: None,
            track_rps: 100,
            app_rps: 100,
            broadcast_interval_ms: 10,
            timeout_ms: 1000,
            circuit_max_backoff_ms: 200,
            circuit_failure_threshold: 3,
            ..CustomerIoSettings::default()
        }
    }

    #[test]
    fn regions_and_overrides() {
        let us = BaseUrls::resolve(&settings(Region::Us, None, None)).unwrap();
        assert_eq!(us.track_v2, "https://track.customer.io/api/v2");
        assert_eq!(us.app, US_APP_URL);
        let eu = BaseUrls::resolve(&settings(Region::Eu, None, None)).unwrap();
        assert_eq!(eu.track_v1, EU_TRACK_URL);
        assert_eq!(eu.track_v2, "https://track-eu.customer.io/api/v2");
        let sb = BaseUrls::resolve(&settings(
            Region::Sandbox,
            Some("http://127.0.0.1:9/sandbox/api/v1/"),
            Some("http://127.0.0.1:9/sandbox/v1"),
        ))
        .unwrap();
        assert_eq!(sb.track_v2, "http://127.0.0.1:9/sandbox/api/v2");
        assert_eq!(sb.pipelines, None, "only the pipelines API needs its URL");
    }

    #[test]
    fn pipelines_urls_by_region_and_override() {
        let pipelines = |region, url: Option<&str>| {
            BaseUrls::resolve(&CustomerIoSettings {
                api: DeliveryApi::Pipelines,
                pipelines_url: url.map(str::to_string),
                ..settings(region, Some("http://x/api/v1"), Some("http://x/v1"))
            })
            .map(|urls| urls.pipelines)
        };
        assert_eq!(
            pipelines(Region::Us, None).unwrap().as_deref(),
            Some(US_PIPELINES_URL)
        );
        assert_eq!(
            pipelines(Region::Eu, None).unwrap().as_deref(),
            Some(EU_PIPELINES_URL)
        );
        assert_eq!(
            pipelines(Region::Eu, Some("http://proxy/v1/"))
                .unwrap()
                .as_deref(),
            Some("http://proxy/v1")
        );
        let e = pipelines(Region::Sandbox, None).unwrap_err();
        assert!(e.to_string().contains("customerio.pipelines_url"), "{e}");
    }

    #[test]
    fn sandbox_needs_urls_and_names_the_key() {
        let e =
            BaseUrls::resolve(&settings(Region::Sandbox, None, Some("http://x/v1"))).unwrap_err();
        assert!(e.to_string().contains("customerio.track_url"), "{e}");
        let e = BaseUrls::resolve(&settings(Region::Sandbox, Some("http://x/api/v1"), None))
            .unwrap_err();
        assert!(e.to_string().contains("customerio.app_url"), "{e}");
        let e = BaseUrls::resolve(&settings(Region::Us, Some("http://x/track"), None)).unwrap_err();
        assert!(e.to_string().contains("/api/v1"), "{e}");
    }
}
