# TPU capacity. Three ways, chosen by var.tpu_provisioning:
#   none    (default) infra/gcloud/tpu-pod.sh creates a queued resource per study run,
#           Spot included, waits for ACTIVE and launches; it uses the network, subnet,
#           firewall and workload service account made here.
#   vm      a TPU VM (pod slice) held by Terraform, Spot or preemptible scheduling.
#   queued  a queued resource held by Terraform (on-demand; the provider's queued
#           resource has no Spot setting in the pinned provider range).

resource "google_tpu_v2_vm" "train" {
  provider = google-beta
  count    = var.tpu_provisioning == "vm" ? 1 : 0

  name             = var.tpu_name
  zone             = var.tpu_zone
  runtime_version  = var.tpu_runtime_version
  accelerator_type = var.tpu_accelerator_type
  description      = "sdce training (${var.tpu_accelerator_type})"

  scheduling_config {
    # Spot supersedes the legacy preemptible model; exactly one of them is set.
    spot        = var.tpu_spot
    preemptible = false
  }

  network_config {
    network             = google_compute_network.main.id
    subnetwork          = google_compute_subnetwork.tpu.id
    enable_external_ips = false
    can_ip_forward      = false
  }

  service_account {
    email = google_service_account.workload.email
    scope = local.cloud_scope
  }

  tags   = ["${var.name_prefix}-tpu"]
  labels = local.labels
  metadata = {
    sdce-bucket = google_storage_bucket.artifacts.name
  }

  depends_on = [google_project_service.apis, google_compute_router_nat.nat]
}

resource "google_tpu_v2_queued_resource" "train" {
  provider = google-beta
  count    = var.tpu_provisioning == "queued" ? 1 : 0

  name = var.tpu_name
  zone = var.tpu_zone

  tpu {
    node_spec {
      parent  = "projects/${var.project_id}/locations/${var.tpu_zone}"
      node_id = var.tpu_name
      node {
        runtime_version  = var.tpu_runtime_version
        accelerator_type = var.tpu_accelerator_type
        description      = "sdce training (${var.tpu_accelerator_type})"
        network_config {
          network             = google_compute_network.main.id
          subnetwork          = google_compute_subnetwork.tpu.id
          enable_external_ips = false
          can_ip_forward      = false
        }
      }
    }
  }

  depends_on = [google_project_service.apis, google_compute_router_nat.nat]
}
