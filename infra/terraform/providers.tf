provider "google" {
  project        = var.project_id
  region         = var.region
  default_labels = local.labels
}

# TPU VMs and queued resources exist only in the beta provider (Cloud TPU API v2alpha1).
provider "google-beta" {
  project        = var.project_id
  region         = var.region
  default_labels = local.labels
}
