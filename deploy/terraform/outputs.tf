output "dataset_id" {
  description = "config warehouse.bigquery.dataset"
  value       = google_bigquery_dataset.customerio.dataset_id
}

output "table_id" {
  description = "config warehouse.bigquery.table"
  value       = google_bigquery_table.delivery_events.table_id
}

output "project_id" {
  description = "config warehouse.bigquery.project"
  value       = var.project_id
}

output "service_account_email" {
  description = "The gateway's service account; the Helm value serviceAccount.annotations[\"iam.gke.io/gcp-service-account\"] under Workload Identity."
  value       = google_service_account.gateway.email
}

output "secret_ids" {
  description = "Secret Manager secret id => the environment variable the gateway expects its value in."
  value       = { for id, env in local.secrets : google_secret_manager_secret.customerio[id].secret_id => env }
}
