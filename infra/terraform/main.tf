locals {
  labels          = merge(var.labels, { managed-by = "terraform" })
  bucket_location = var.bucket_location != "" ? var.bucket_location : upper(var.region)
  # us-central2-b -> us-central2
  tpu_region   = regex("^([a-z]+-[a-z]+[0-9]+)-[a-z]$", var.tpu_zone)[0]
  registry_url = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
  cloud_scope  = ["https://www.googleapis.com/auth/cloud-platform"]
}

resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "compute.googleapis.com",
    "container.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "storage.googleapis.com",
    "tpu.googleapis.com",
  ])
  project = var.project_id
  service = each.value
  # Leave the APIs on when this module is destroyed: other work in the project may use them.
  disable_on_destroy = false
}
