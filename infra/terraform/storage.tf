# Artifacts bucket: datasets, tokenizers, checkpoints, evaluations, reports, and the
# default storage of Snakemake's Kubernetes runs (--default-storage-provider gcs).
resource "google_storage_bucket" "artifacts" {
  #checkov:skip=CKV_GCP_62:Object access is recorded by Cloud Audit data-access logs (google_project_iam_audit_config.storage below), which supersede GCS usage-log buckets.
  name                        = var.artifact_bucket_name
  location                    = local.bucket_location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  # Checkpoints are overwritten in place as training advances; versioning keeps the
  # overwritten ones (a crash mid-write never loses the last good checkpoint). Keep only
  # the newest few non-current versions of each checkpoint object...
  lifecycle_rule {
    condition {
      matches_prefix     = [var.checkpoint_prefix]
      with_state         = "ARCHIVED"
      num_newer_versions = var.checkpoint_noncurrent_versions_kept
    }
    action {
      type = "Delete"
    }
  }

  # ...and none older than checkpoint_noncurrent_days, whatever their count.
  lifecycle_rule {
    condition {
      matches_prefix             = [var.checkpoint_prefix]
      with_state                 = "ARCHIVED"
      days_since_noncurrent_time = var.checkpoint_noncurrent_days
    }
    action {
      type = "Delete"
    }
  }

  # Interrupted resumable/multipart uploads (preempted writers) do not linger.
  lifecycle_rule {
    condition {
      age = 7
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_project_iam_audit_config" "storage" {
  count   = var.enable_storage_data_access_logs ? 1 : 0
  project = var.project_id
  service = "storage.googleapis.com"
  audit_log_config {
    log_type = "DATA_READ"
  }
  audit_log_config {
    log_type = "DATA_WRITE"
  }
}

resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Images hold only public code and pinned public packages; Google-managed encryption is adequate and a CMEK key ring would outlive every other resource of the study.
  location      = var.region
  repository_id = var.registry_repository_id
  description   = "sdce container images: cpu, cuda (Snakemake Kubernetes job image), tpu."
  format        = "DOCKER"

  docker_config {
    # A pushed tag never moves; config/config.yaml refers to images by digest anyway.
    immutable_tags = true
  }

  depends_on = [google_project_service.apis]
}
