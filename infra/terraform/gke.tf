# GKE cluster for the Snakemake Kubernetes executor.
#
# How jobs reach the pools. The executor (snakemake-executor-plugin-kubernetes) sets, per
# job, only: a node selector node.kubernetes.io/instance-type=<machine_type> when the
# rule has a `machine_type` resource, and, for `gpu` + gpu_manufacturer="nvidia", a
# request for nvidia.com/gpu plus the toleration nvidia.com/gpu=present:NoSchedule. It
# sets no Spot toleration and no GPU-type selector. Hence:
#   * the GPU pool carries the taint nvidia.com/gpu=present:NoSchedule, so jobs without
#     the GPU toleration (every CPU job) never land on it;
#   * the GPU pool's machine type is used by no other pool (validated), so a GPU rule with
#     resources: machine_type="<gpu_machine_type>", gpu=1, gpu_manufacturer="nvidia"
#     lands on it and the autoscaler scales it up from 0;
#   * Spot nodes get GKE's label cloud.google.com/gke-spot=true but no taint, so no Spot
#     toleration is needed;
#   * CPU jobs (no machine_type) go to the untainted CPU pool.

resource "google_container_cluster" "main" {
  #checkov:skip=CKV_GCP_65:RBAC for Google Groups needs a Google Workspace domain group (gke-security-groups@<domain>), which a study project may not have; access is granted with IAM on the project instead.
  #checkov:skip=CKV_GCP_66:Binary Authorization needs an attestor pipeline; images come from this project's registry with immutable tags and are referenced by digest.
  #checkov:skip=CKV_GCP_12:Network policy is enforced by GKE Dataplane V2 (datapath_provider = ADVANCED_DATAPATH), which replaces the network_policy add-on (the two cannot be combined).
  name     = "${var.name_prefix}-gke"
  location = var.gke_zone

  network    = google_compute_network.main.id
  subnetwork = google_compute_subnetwork.gke.id

  # Node pools are managed below; the default pool is removed right after creation.
  remove_default_node_pool = true
  initial_node_count       = 1
  deletion_protection      = var.deletion_protection

  networking_mode   = "VPC_NATIVE"
  datapath_provider = "ADVANCED_DATAPATH"
  ip_allocation_policy {
    cluster_secondary_range_name  = "pods"
    services_secondary_range_name = "services"
  }

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = false
    master_ipv4_cidr_block  = var.master_ipv4_cidr_block
  }

  master_authorized_networks_config {
    dynamic "cidr_blocks" {
      for_each = var.master_authorized_networks
      content {
        cidr_block   = cidr_blocks.value.cidr_block
        display_name = cidr_blocks.value.display_name
      }
    }
  }

  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  release_channel {
    channel = var.release_channel
  }

  enable_shielded_nodes       = true
  enable_intranode_visibility = true
  enable_legacy_abac          = false

  logging_config {
    enable_components = ["SYSTEM_COMPONENTS", "WORKLOADS"]
  }
  monitoring_config {
    enable_components = ["SYSTEM_COMPONENTS"]
    managed_prometheus {
      enabled = true
    }
  }

  resource_labels = local.labels

  # Settings of the short-lived default pool (removed at creation).
  node_config {
    service_account = google_service_account.nodes.email
    oauth_scopes    = local.cloud_scope
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    metadata = {
      disable-legacy-endpoints = "true"
    }
  }

  lifecycle {
    ignore_changes = [node_config, initial_node_count]
  }

  depends_on = [google_project_service.apis, google_project_iam_member.nodes_default]
}

resource "google_container_node_pool" "cpu" {
  name     = "cpu"
  cluster  = google_container_cluster.main.id
  location = var.gke_zone

  autoscaling {
    min_node_count = var.cpu_pool_min_nodes
    max_node_count = var.cpu_pool_max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = var.cpu_machine_type
    image_type      = "COS_CONTAINERD"
    disk_type       = "pd-balanced"
    disk_size_gb    = var.node_disk_size_gb
    service_account = google_service_account.nodes.email
    oauth_scopes    = local.cloud_scope

    labels = {
      "sdce.io/pool" = "cpu"
    }
    resource_labels = local.labels

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    metadata = {
      disable-legacy-endpoints = "true"
    }
  }
}

resource "google_container_node_pool" "gpu" {
  name     = "gpu"
  cluster  = google_container_cluster.main.id
  location = var.gke_zone

  # Scale to zero: GPU nodes exist only while GPU jobs are pending or running.
  initial_node_count = 0
  autoscaling {
    min_node_count  = 0
    max_node_count  = var.gpu_pool_max_nodes
    location_policy = "ANY"
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = var.gpu_machine_type
    image_type      = "COS_CONTAINERD"
    disk_type       = "pd-balanced"
    disk_size_gb    = var.node_disk_size_gb
    spot            = var.gpu_spot
    service_account = google_service_account.nodes.email
    oauth_scopes    = local.cloud_scope

    guest_accelerator {
      type  = var.gpu_accelerator_type
      count = var.gpu_accelerator_count
      # Immutable: a new gpu_driver_version recreates this pool.
      gpu_driver_installation_config {
        gpu_driver_version = var.gpu_driver_version
      }
    }

    labels = {
      "sdce.io/pool"        = "gpu"
      "sdce.io/accelerator" = var.gpu_accelerator_type
    }
    resource_labels = local.labels

    # The toleration the Snakemake executor adds to every NVIDIA GPU job matches this
    # taint exactly (key nvidia.com/gpu, value present, effect NoSchedule).
    taint {
      key    = "nvidia.com/gpu"
      value  = "present"
      effect = "NO_SCHEDULE"
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    metadata = {
      disable-legacy-endpoints = "true"
    }
  }

  lifecycle {
    precondition {
      condition     = var.gpu_machine_type != var.cpu_machine_type
      error_message = "The GPU pool's machine type must be unique to it: Snakemake GPU jobs select the pool by machine type."
    }
  }
}
