variable "name" {
  type        = string
  description = "Name of the EKS cluster, e.g. \"gantry-production\"."
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes minor version of the control plane and node groups."
  default     = "1.32"
}

variable "vpc_id" {
  type        = string
  description = "VPC the cluster runs in (network module output vpc_id)."
}

variable "private_subnet_ids" {
  type        = list(string)
  description = "Private subnets, one per zone, for the control plane's interfaces and the nodes."

  validation {
    condition     = length(var.private_subnet_ids) >= 3
    error_message = "Nodes spread over at least three zones."
  }
}

variable "endpoint_public_access_cidrs" {
  type        = list(string)
  description = "CIDR ranges allowed to reach the public API endpoint; empty keeps the endpoint private only."
  default     = []
}

variable "node_groups" {
  type = map(object({
    instance_types = list(string)
    capacity_type  = optional(string, "ON_DEMAND")
    min_size       = number
    max_size       = number
    desired_size   = number
    disk_size_gb   = optional(number, 50)
    labels         = optional(map(string), {})
  }))
  description = "Managed node groups by name. The cluster autoscaler moves each between min_size and max_size."

  validation {
    condition     = alltrue([for group in values(var.node_groups) : group.min_size <= group.desired_size && group.desired_size <= group.max_size])
    error_message = "Each node group needs min_size <= desired_size <= max_size."
  }

  validation {
    condition     = alltrue([for group in values(var.node_groups) : contains(["ON_DEMAND", "SPOT"], group.capacity_type)])
    error_message = "capacity_type is ON_DEMAND or SPOT."
  }
}

variable "autoscaler" {
  type = object({
    namespace                     = optional(string, "kube-system")
    service_account               = optional(string, "cluster-autoscaler")
    scale_down_unneeded_time      = optional(string, "10m")
    scale_down_utilization        = optional(number, 0.5)
    balance_similar_node_groups   = optional(bool, true)
    skip_nodes_with_local_storage = optional(bool, false)
    expander                      = optional(string, "least-waste")
  })
  description = "Cluster autoscaler settings: its service account (bound to an IAM role here) and the flags it is started with (output autoscaler_args)."
  default     = {}
}

variable "log_retention_days" {
  type        = number
  description = "How long control plane logs are kept in CloudWatch Logs."
  default     = 365
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
