variable "name" {
  type        = string
  description = "Prefix for every resource name, e.g. \"gantry-production\"."
}

variable "cidr_block" {
  type        = string
  description = "IPv4 range of the VPC; split into one public and one private /20 (by default) per zone."
  default     = "10.0.0.0/16"

  validation {
    condition     = can(cidrhost(var.cidr_block, 0))
    error_message = "cidr_block must be a valid IPv4 CIDR block."
  }
}

variable "availability_zones" {
  type        = list(string)
  description = "Exactly three availability zones: the cluster and the database spread over all of them."

  validation {
    condition     = length(var.availability_zones) == 3
    error_message = "The network spans exactly three availability zones."
  }
}

variable "subnet_newbits" {
  type        = number
  description = "Bits added to the VPC prefix for each subnet (4 turns a /16 into /20 subnets)."
  default     = 4
}

variable "single_nat_gateway" {
  type        = bool
  description = "One NAT gateway for all zones (cheaper, for staging) instead of one per zone (highly available)."
  default     = false
}

variable "flow_log_retention_days" {
  type        = number
  description = "How long VPC flow logs are kept in CloudWatch Logs."
  default     = 365
}

variable "cluster_name" {
  type        = string
  description = "Name of the EKS cluster that will use these subnets; tags them for load balancer discovery."
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
