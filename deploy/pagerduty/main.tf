# certpager's PagerDuty side, as Terraform (PagerDuty/pagerduty and hashicorp/kubernetes providers):
# the "Certificate Management" business service with one technical service per environment (Production,
# Staging, Internal PKI, Code Signing), one four-level escalation policy (0, 15, 30, 60 minutes), an
# Events API v2 integration per service, event orchestration by certpager's alert classes, and the
# Kubernetes Secret the bridge reads its routing keys from. Walkthrough: docs/deploy-pagerduty.md.
#
#   export PAGERDUTY_TOKEN=...   # a REST API key with write access
#   terraform init && terraform apply -var-file=certificates.tfvars

terraform {
  required_version = ">= 1.5"
  required_providers {
    pagerduty = {
      source  = "PagerDuty/pagerduty"
      version = "~> 3.15"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.31"
    }
  }
}

variable "primary_on_call" {
  description = "Emails of the PagerDuty users in the weekly primary rotation (level 1)."
  type        = list(string)
}

variable "secondary_on_call" {
  description = "Emails of the PagerDuty users in the weekly secondary rotation (level 2)."
  type        = list(string)
}

variable "team_lead" {
  description = "Email of the PKI team lead (level 3)."
  type        = string
}

variable "head_of_infrastructure" {
  description = "Email of the head of infrastructure (level 4)."
  type        = string
}

variable "time_zone" {
  type    = string
  default = "Etc/UTC"
}

variable "rotation_start" {
  description = "When the weekly rotations start (RFC 3339), e.g. 2026-01-05T09:00:00Z."
  type        = string
}

variable "bridge_webhook_url" {
  description = "https://<bridge ingress>/api/v1/pagerduty/webhook, for the acknowledgement sync; empty: no subscription."
  type        = string
  default     = ""
}

variable "bridge_namespace" {
  description = "Namespace of the certpager release; the Secret is created there."
  type        = string
  default     = "monitoring"
}

locals {
  # environment label value (the bridge's routing_key_files key) -> PagerDuty service
  services = {
    production = {
      name        = "Certificates: Production"
      description = "Certificates of customer-facing production endpoints."
      urgency     = "severity_based" # critical/error page now, warning/info wait for working hours
    }
    staging = {
      name        = "Certificates: Staging"
      description = "Certificates of staging endpoints."
      urgency     = "low" # never wakes anyone
    }
    internal-pki = {
      name        = "Certificates: Internal PKI"
      description = "The internal CA hierarchy and the mTLS certificates it issues."
      urgency     = "severity_based"
    }
    code-signing = {
      name        = "Certificates: Code Signing"
      description = "Code and artifact signing certificates."
      urgency     = "severity_based"
    }
  }

  # certpager's alert classes (rules/certpager.rules.yml, label `class`; the event's payload.class) by priority:
  # P1 the classes the rules make critical, P3 the warning ones (tests/deploy/test_pagerduty_terraform.py).
  class_priorities = {
    P1 = ["certificate_expired", "renewal_failed", "verify_failed"]
    P2 = ["certificate_expiring_7_days", "deployment_failed", "policy_violation"]
    P3 = ["certificate_expiring_30_days", "probe_failed"]
  }

  # The Secret's keys; the bridge reads /etc/certpager/secrets/certpager-pagerduty/routing-key-<environment>.
  secret_name = "certpager-pagerduty"
}

data "pagerduty_user" "primary" {
  for_each = toset(var.primary_on_call)
  email    = each.value
}

data "pagerduty_user" "secondary" {
  for_each = toset(var.secondary_on_call)
  email    = each.value
}

data "pagerduty_user" "team_lead" {
  email = var.team_lead
}

data "pagerduty_user" "head_of_infrastructure" {
  email = var.head_of_infrastructure
}

data "pagerduty_priority" "p1" {
  name = "P1"
}

data "pagerduty_priority" "p2" {
  name = "P2"
}

data "pagerduty_priority" "p3" {
  name = "P3"
}

resource "pagerduty_team" "certificates" {
  name        = "Certificate Management"
  description = "Owns TLS, internal PKI and code signing certificates."
}

resource "pagerduty_schedule" "primary" {
  name      = "Certificates primary"
  time_zone = var.time_zone
  teams     = [pagerduty_team.certificates.id]
  layer {
    name                         = "Weekly"
    start                        = var.rotation_start
    rotation_virtual_start       = var.rotation_start
    rotation_turn_length_seconds = 604800
    users                        = [for u in data.pagerduty_user.primary : u.id]
  }
}

resource "pagerduty_schedule" "secondary" {
  name      = "Certificates secondary"
  time_zone = var.time_zone
  teams     = [pagerduty_team.certificates.id]
  layer {
    name                         = "Weekly"
    start                        = var.rotation_start
    rotation_virtual_start       = var.rotation_start
    rotation_turn_length_seconds = 604800
    users                        = [for u in data.pagerduty_user.secondary : u.id]
  }
}

# Four levels. A rule's escalation_delay_in_minutes is how long an unacknowledged incident stays at that level,
# so the levels start at 0 (primary), 15 (secondary), 30 (team lead) and 60 minutes (head of infrastructure).
resource "pagerduty_escalation_policy" "certificates" {
  name      = "Certificate Management"
  teams     = [pagerduty_team.certificates.id]
  num_loops = 2

  rule {
    escalation_delay_in_minutes = 15
    target {
      type = "schedule_reference"
      id   = pagerduty_schedule.primary.id
    }
  }
  rule {
    escalation_delay_in_minutes = 15
    target {
      type = "schedule_reference"
      id   = pagerduty_schedule.secondary.id
    }
  }
  rule {
    escalation_delay_in_minutes = 30
    target {
      type = "user_reference"
      id   = data.pagerduty_user.team_lead.id
    }
  }
  rule {
    escalation_delay_in_minutes = 30
    target {
      type = "user_reference"
      id   = data.pagerduty_user.head_of_infrastructure.id
    }
  }
}

resource "pagerduty_service" "certificates" {
  for_each          = local.services
  name              = each.value.name
  description       = each.value.description
  escalation_policy = pagerduty_escalation_policy.certificates.id
  alert_creation    = "create_alerts_and_incidents"
  # The bridge resolves incidents itself when the certificate is fixed; PagerDuty must not close them early.
  auto_resolve_timeout    = "null"
  acknowledgement_timeout = 14400 # an acknowledged incident re-notifies after 4 hours without progress

  incident_urgency_rule {
    type    = "constant"
    urgency = each.value.urgency
  }
}

# The routing key of each environment: certpager bridge sends Events API v2 events here.
resource "pagerduty_service_integration" "certpager" {
  for_each = pagerduty_service.certificates
  name     = "certpager bridge"
  type     = "events_api_v2_inbound_integration"
  service  = each.value.id
}

# Priorities from the alert class the bridge puts in payload.class.
resource "pagerduty_event_orchestration_service" "certificates" {
  for_each                               = pagerduty_service.certificates
  service                                = each.value.id
  enable_event_orchestration_for_service = true

  set {
    id = "start"
    rule {
      label = "Expired, renewal failed, verification failed: P1"
      dynamic "condition" {
        for_each = local.class_priorities["P1"]
        content {
          expression = "event.class matches '${condition.value}'"
        }
      }
      actions {
        priority = data.pagerduty_priority.p1.id
      }
    }
    rule {
      label = "Expiring within 7 days, deployment failed, policy violated: P2"
      dynamic "condition" {
        for_each = local.class_priorities["P2"]
        content {
          expression = "event.class matches '${condition.value}'"
        }
      }
      actions {
        priority = data.pagerduty_priority.p2.id
      }
    }
    rule {
      label = "Expiring within 30 days, probe failed: P3"
      dynamic "condition" {
        for_each = local.class_priorities["P3"]
        content {
          expression = "event.class matches '${condition.value}'"
        }
      }
      actions {
        priority = data.pagerduty_priority.p3.id
      }
    }
  }

  catch_all {
    actions {}
  }
}

resource "pagerduty_business_service" "certificate_management" {
  name        = "Certificate Management"
  description = "Every certificate certpager watches, by environment."
  team        = pagerduty_team.certificates.id
}

resource "pagerduty_service_dependency" "certificate_management" {
  for_each = pagerduty_service.certificates
  dependency {
    dependent_service {
      id   = pagerduty_business_service.certificate_management.id
      type = "business_service"
    }
    supporting_service {
      id   = each.value.id
      type = "service"
    }
  }
}

# Acknowledgement sync (docs/ack-sync.md): PagerDuty Webhooks v3 to the bridge, for every incident event the
# bridge acts on. PagerDuty shows a subscription's signing secret once, when it is created: put it in the
# Secret's key webhook-secrets (integrations.pagerduty.webhook_secret_file).
resource "pagerduty_webhook_subscription" "certpager" {
  for_each    = var.bridge_webhook_url == "" ? {} : pagerduty_service.certificates
  type        = "webhook_subscription"
  description = "certpager acknowledgement sync"
  active      = true
  events = [
    "incident.triggered",
    "incident.acknowledged",
    "incident.unacknowledged",
    "incident.resolved",
    "incident.reopened",
    "incident.escalated",
    "incident.priority_updated",
  ]
  delivery_method {
    type = "http_delivery_method"
    url  = var.bridge_webhook_url
  }
  filter {
    type = "service_reference"
    id   = each.value.id
  }
}

# The bridge's routing keys, mounted by the Helm chart (bridge.secretMounts: [certpager-pagerduty]).
resource "kubernetes_secret" "certpager_pagerduty" {
  metadata {
    name      = local.secret_name
    namespace = var.bridge_namespace
  }
  data = {
    for environment, integration in pagerduty_service_integration.certpager :
    "routing-key-${environment}" => integration.integration_key
  }
}

output "routing_key_files" {
  description = "bridge.config.integrations.pagerduty.routing_key_files for the Helm values."
  value = {
    for environment in keys(local.services) :
    environment => "/etc/certpager/secrets/${local.secret_name}/routing-key-${environment}"
  }
}
