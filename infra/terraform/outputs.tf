output "artifact_bucket" {
  description = "Name of the artifacts bucket (SDCE_BUCKET for tpu-pod.sh; Snakemake --default-storage-prefix gs://<it>)."
  value       = google_storage_bucket.artifacts.name
}

output "artifact_bucket_url" {
  description = "gs:// URL of the artifacts bucket."
  value       = google_storage_bucket.artifacts.url
}

output "registry_url" {
  description = "Docker registry path of the images; push <registry_url>/sdce:<target>, then record the digests in config/config.yaml (containers:)."
  value       = local.registry_url
}

output "image_repositories" {
  description = "Image repository per target, to be suffixed with @sha256:<digest> after the push."
  value       = { for t in ["cpu", "cuda", "tpu"] : t => "${local.registry_url}/sdce-${t}" }
}

output "workload_service_account" {
  description = "Email of the workload service account (annotate the Kubernetes service account with it; SDCE_SERVICE_ACCOUNT for tpu-pod.sh)."
  value       = google_service_account.workload.email
}

output "node_service_account" {
  description = "Email of the GKE nodes' service account."
  value       = google_service_account.nodes.email
}

output "cluster_name" {
  description = "Name of the GKE cluster."
  value       = google_container_cluster.main.name
}

output "cluster_location" {
  description = "Zone of the GKE cluster."
  value       = google_container_cluster.main.location
}

output "get_credentials_command" {
  description = "Command that writes the kubeconfig entry for the cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.main.name} --zone ${google_container_cluster.main.location} --project ${var.project_id}"
}

output "gpu_job_resources" {
  description = "Snakemake resources that send a job to the GPU pool."
  value = {
    machine_type     = var.gpu_machine_type
    gpu              = var.gpu_accelerator_count
    gpu_manufacturer = "nvidia"
  }
}

output "kubernetes_namespace" {
  description = "Namespace for Snakemake's jobs (--kubernetes-namespace)."
  value       = var.k8s_namespace
}

output "kubernetes_service_account" {
  description = "Kubernetes service account for Snakemake's jobs (--kubernetes-service-account-name)."
  value       = var.k8s_service_account
}

output "network" {
  description = "VPC network name (SDCE_NETWORK for tpu-pod.sh)."
  value       = google_compute_network.main.name
}

output "tpu_subnetwork" {
  description = "Subnetwork for TPU workers (SDCE_SUBNETWORK for tpu-pod.sh)."
  value       = google_compute_subnetwork.tpu.name
}

output "tpu_network_tag" {
  description = "Network tag the TPU firewall rules target (SDCE_TPU_TAGS for tpu-pod.sh)."
  value       = "${var.name_prefix}-tpu"
}

output "tpu_node" {
  description = "TPU node made by Terraform (null when tpu_provisioning = none)."
  value       = var.tpu_provisioning == "none" ? null : { name = var.tpu_name, zone = var.tpu_zone, accelerator_type = var.tpu_accelerator_type }
}
