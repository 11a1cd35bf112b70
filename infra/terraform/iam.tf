# Two service accounts, each with the least it needs.
#
# workload: what the study's code runs as (Snakemake jobs on GKE through Workload
#   Identity, TPU VM workers). Object admin on the artifacts bucket only (no bucket
#   admin, nothing elsewhere), image pull from this repository only, log writing.
# nodes: the GKE node VMs' identity (kubelet, logging and monitoring agents, image pulls).

resource "google_service_account" "workload" {
  account_id   = "${var.name_prefix}-workload"
  display_name = "sdce study workloads (Snakemake jobs, TPU workers)"
  depends_on   = [google_project_service.apis]
}

resource "google_storage_bucket_iam_member" "workload_objects" {
  bucket = google_storage_bucket.artifacts.name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.workload.member
}

resource "google_artifact_registry_repository_iam_member" "workload_pull" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = google_service_account.workload.member
}

resource "google_project_iam_member" "workload_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.workload.member
}

# Kubernetes service account <k8s_namespace>/<k8s_service_account> may act as the
# workload service account (the KSA is annotated with iam.gke.io/gcp-service-account).
resource "google_service_account_iam_member" "workload_identity" {
  service_account_id = google_service_account.workload.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.k8s_namespace}/${var.k8s_service_account}]"
  # The identity pool exists once the cluster does.
  depends_on = [google_container_cluster.main]
}

resource "google_service_account" "nodes" {
  account_id   = "${var.name_prefix}-gke-nodes"
  display_name = "sdce GKE nodes"
  depends_on   = [google_project_service.apis]
}

# GKE's minimal role for node service accounts (log and metric writing, node metadata).
resource "google_project_iam_member" "nodes_default" {
  project = var.project_id
  role    = "roles/container.defaultNodeServiceAccount"
  member  = google_service_account.nodes.member
}

resource "google_artifact_registry_repository_iam_member" "nodes_pull" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = google_service_account.nodes.member
}
