# A dedicated VPC: private GKE nodes and TPU workers without external addresses. Private
# Google Access reaches GCS and Artifact Registry; Cloud NAT gives outbound access (pip
# on TPU workers, public images) with no inbound path.

resource "google_compute_network" "main" {
  name                    = "${var.name_prefix}-net"
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"
  depends_on              = [google_project_service.apis]
}

resource "google_compute_subnetwork" "gke" {
  name                     = "${var.name_prefix}-gke"
  region                   = var.region
  network                  = google_compute_network.main.id
  ip_cidr_range            = var.subnet_cidr
  private_ip_google_access = true

  secondary_ip_range {
    range_name    = "pods"
    ip_cidr_range = var.pods_cidr
  }
  secondary_ip_range {
    range_name    = "services"
    ip_cidr_range = var.services_cidr
  }

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Used by Terraform's TPU (tpu_provisioning) and by infra/gcloud/tpu-pod.sh alike.
resource "google_compute_subnetwork" "tpu" {
  name                     = "${var.name_prefix}-tpu"
  region                   = local.tpu_region
  network                  = google_compute_network.main.id
  ip_cidr_range            = var.tpu_subnet_cidr
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_router" "nat" {
  for_each = toset(distinct([var.region, local.tpu_region]))
  name     = "${var.name_prefix}-router-${each.value}"
  region   = each.value
  network  = google_compute_network.main.id
}

resource "google_compute_router_nat" "nat" {
  for_each                           = google_compute_router.nat
  name                               = "${var.name_prefix}-nat-${each.key}"
  router                             = each.value.name
  region                             = each.key
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# TPU pod workers talk to each other (DCN, coordinator) on all ports inside the TPU subnet.
resource "google_compute_firewall" "tpu_internal" {
  name      = "${var.name_prefix}-tpu-internal"
  network   = google_compute_network.main.id
  direction = "INGRESS"
  priority  = 1000

  source_ranges = [var.tpu_subnet_cidr]
  target_tags   = ["${var.name_prefix}-tpu"]

  allow {
    protocol = "tcp"
  }
  allow {
    protocol = "udp"
  }
  allow {
    protocol = "icmp"
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

# SSH to TPU workers only through Identity-Aware Proxy TCP forwarding (tpu-pod.sh uses
# --tunnel-through-iap); 35.235.240.0/20 is IAP's published source range.
resource "google_compute_firewall" "iap_ssh" {
  name      = "${var.name_prefix}-iap-ssh"
  network   = google_compute_network.main.id
  direction = "INGRESS"
  priority  = 1000

  source_ranges = ["35.235.240.0/20"]
  target_tags   = ["${var.name_prefix}-tpu"]

  allow {
    protocol = "tcp"
    ports    = ["22"]
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}
