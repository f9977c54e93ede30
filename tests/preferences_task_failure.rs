//! A preference request whose store task panics is answered 503, and the HTTP worker lives on
//! (issue 24, item 4).

mod common;

use actix_web::test as web_test;
use actix_web::{App, web};
use async_trait::async_trait;
use cio_gateway::domain::UserId;
use cio_gateway::http;
use cio_gateway::preferences::{
    PreferenceService, PreferenceStore, PreferencesChange, StoreError, StoredPreferences, UserLock,
};
use std::sync::Arc;

const TOKEN: &str = "ingest-secret";

/// A store whose every call panics, as a bug in a driver would.
struct PanickingStore;

#[async_trait]
impl PreferenceStore for PanickingStore {
    async fn get(&self, _: &UserId) -> Result<Option<StoredPreferences>, StoreError> {
        panic!("store bug")
    }
    async fn apply(
        &self,
        _: &UserId,
        _: &PreferencesChange,
    ) -> Result<StoredPreferences, StoreError> {
        panic!("store bug")
    }
    async fn apply_remote(
        &self,
        _: &UserId,
        _: &PreferencesChange,
        _: i64,
    ) -> Result<Option<StoredPreferences>, StoreError> {
        panic!("store bug")
    }
    async fn mark_synced(&self, _: &UserId, _: i64) -> Result<bool, StoreError> {
        panic!("store bug")
    }
    async fn pending(&self, _: u32) -> Result<Vec<StoredPreferences>, StoreError> {
        panic!("store bug")
    }
    async fn pending_count(&self) -> Result<u64, StoreError> {
        panic!("store bug")
    }
    async fn lock_user<'a>(&'a self, _: &'a UserId) -> Result<Box<dyn UserLock + 'a>, StoreError> {
        panic!("store bug")
    }
    async fn close(&self) {}
}

#[actix_rt::test]
async fn a_panicking_store_task_is_a_503() {
    let state = common::routes_state(&[("GATEWAY__INGEST__TOKEN", TOKEN)]).await;
    let service = PreferenceService::new(Arc::new(PanickingStore), state.publisher.clone(), None);
    let app = web_test::init_service(
        App::new()
            .app_data(web::Data::new(state.with_preferences(service)))
            .configure(http::configure),
    )
    .await;
    for request in [
        web_test::TestRequest::get().uri("/v1/users/u1/preferences"),
        web_test::TestRequest::patch()
            .uri("/v1/users/u1/preferences")
            .set_json(serde_json::json!({"email": false})),
        web_test::TestRequest::post().uri("/v1/users/u1/sync"),
    ] {
        let request = request
            .insert_header(("authorization", format!("Bearer {TOKEN}")))
            .to_request();
        let response = web_test::call_service(&app, request).await;
        assert_eq!(response.status().as_u16(), 503);
    }
}
