# Google Cloud resources of cio-gateway's BigQuery warehouse sink:
#   - the dataset and the delivery_events table (schema: ../bigquery/delivery_events.json),
#   - a service account the gateway runs as, allowed to write to that dataset only,
#   - Secret Manager secrets for every key of the chart's Secret (Customer.io credentials,
#     AMQP_URL, DATABASE_URL, the admin and ingest tokens), readable by that account,
#   - the Google APIs these need (enabled, never disabled on destroy).
# Secret *values* are never in Terraform (they would land in its state): add them with
#   gcloud secrets versions add <id> --data-file=-
# and sync them into the Kubernetes Secret the Helm chart reads (e.g. External Secrets).

locals {
  labels = merge({ app = "cio-gateway" }, var.labels)

  # Secret Manager id => the environment variable the gateway reads it as.
  secrets = {
    "customerio-site-id"        = "CUSTOMERIO_SITE_ID"
    "customerio-api-key"        = "CUSTOMERIO_API_KEY"
    "customerio-app-api-key"    = "CUSTOMERIO_APP_API_KEY"
    "customerio-webhook-secret" = "CUSTOMERIO_WEBHOOK_SECRET"
    "amqp-url"                  = "AMQP_URL"
    "database-url"              = "DATABASE_URL"
    "admin-token"               = "GATEWAY__ADMIN__TOKEN"
    "ingest-token"              = "GATEWAY__INGEST__TOKEN"
  }

  # The Google APIs the resources below need.
  services = [
    "bigquery.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "secretmanager.googleapis.com",
  ]
}

resource "google_project_service" "required" {
  for_each = toset(local.services)

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

resource "google_bigquery_dataset" "customerio" {
  project     = var.project_id
  dataset_id  = var.dataset_id
  location    = var.location
  description = "Customer.io reporting events written by cio-gateway."
  labels      = local.labels
}

resource "google_bigquery_table" "delivery_events" {
  project     = var.project_id
  dataset_id  = google_bigquery_dataset.customerio.dataset_id
  table_id    = var.table_id
  description = "One row per Customer.io reporting event, de-duplicated on event_id."
  labels      = local.labels

  schema = file("${path.module}/../bigquery/delivery_events.json")

  # Queries almost always filter on the event time: partition by its UTC day ...
  time_partitioning {
    type          = "DAY"
    field         = "timestamp"
    expiration_ms = var.partition_expiration_days == null ? null : var.partition_expiration_days * 86400000
  }
  # ... and cluster by what they group on.
  clustering = ["object_type", "metric"]

  deletion_protection = var.deletion_protection
}

resource "google_service_account" "gateway" {
  project      = var.project_id
  account_id   = var.service_account_id
  display_name = "cio-gateway"
  description  = "Runs cio-gateway: writes Customer.io reporting events to BigQuery, reads its secrets."
}

# Write rows to this dataset only (tabledata.insertAll), nothing else in the project.
resource "google_bigquery_dataset_iam_member" "gateway_data_editor" {
  project    = var.project_id
  dataset_id = google_bigquery_dataset.customerio.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = "serviceAccount:${google_service_account.gateway.email}"
}

resource "google_secret_manager_secret" "customerio" {
  for_each = local.secrets

  depends_on = [google_project_service.required]

  project   = var.project_id
  secret_id = "${var.secret_prefix}${each.key}"
  labels    = merge(local.labels, { env_var = lower(each.value) })

  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_iam_member" "gateway_accessor" {
  for_each = google_secret_manager_secret.customerio

  project   = var.project_id
  secret_id = each.value.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.gateway.email}"
}

# Optional: let the chart's Kubernetes service account act as the GCP one (GKE Workload
# Identity). Annotate it with iam.gke.io/gcp-service-account = the email output.
resource "google_service_account_iam_member" "workload_identity" {
  count = var.kubernetes_namespace == null ? 0 : 1

  service_account_id = google_service_account.gateway.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.kubernetes_namespace}/${var.kubernetes_service_account}]"
}
