variable "project_id" {
  description = "GCP project holding the dataset, the service account and the secrets."
  type        = string
}

variable "location" {
  description = "BigQuery dataset location (US, EU, or a region). Match the Customer.io region for data residency."
  type        = string
  default     = "US"
}

variable "dataset_id" {
  description = "BigQuery dataset for the gateway's warehouse rows (config warehouse.bigquery.dataset)."
  type        = string
  default     = "customerio"
}

variable "table_id" {
  description = "Table of reporting events (config warehouse.bigquery.table)."
  type        = string
  default     = "delivery_events"
}

variable "partition_expiration_days" {
  description = "Drop day partitions older than this many days; null keeps them forever."
  type        = number
  default     = null
}

variable "deletion_protection" {
  description = "Refuse `terraform destroy` of the table while true."
  type        = bool
  default     = true
}

variable "service_account_id" {
  description = "Account id (the part before @) of the gateway's service account."
  type        = string
  default     = "cio-gateway"
}

variable "secret_prefix" {
  description = "Prefix of the Secret Manager secret ids, e.g. \"prod-\" gives prod-customerio-api-key."
  type        = string
  default     = ""
}

variable "kubernetes_namespace" {
  description = "Namespace of the gateway's Kubernetes service account, for a Workload Identity binding; null for none."
  type        = string
  default     = null
}

variable "kubernetes_service_account" {
  description = "Name of the gateway's Kubernetes service account (the Helm release's full name by default)."
  type        = string
  default     = "cio-gateway"
}

variable "labels" {
  description = "Labels put on every resource that takes them."
  type        = map(string)
  default     = {}
}
