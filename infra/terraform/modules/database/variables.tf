variable "name" {
  type        = string
  description = "Identifier of the database instance, e.g. \"gantry-production\"; unique per environment."
}

variable "environment" {
  type        = string
  description = "\"staging\" or \"production\"; production refuses a database that is not multi-AZ and deletion-protected."

  validation {
    condition     = contains(["staging", "production"], var.environment)
    error_message = "environment is staging or production."
  }
}

variable "vpc_id" {
  type        = string
  description = "VPC of the database's security group."
}

variable "private_subnet_ids" {
  type        = list(string)
  description = "Private subnets (network module output private_subnet_ids); the database is never placed in a public one."

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "RDS needs subnets in at least two zones."
  }
}

variable "allowed_security_groups" {
  type = map(string)
  # A map, not a list: its keys name the ingress rules and are known when planning a new
  # environment, while the ids of security groups created in the same plan are not.
  description = "Security groups that may connect on the PostgreSQL port, by name (e.g. cluster = sg-...)."
}

variable "engine_version" {
  type        = string
  description = "PostgreSQL major.minor version."
  default     = "16.4"
}

variable "instance_class" {
  type        = string
  description = "RDS instance class."
  default     = "db.t4g.medium"
}

variable "allocated_storage_gb" {
  type        = number
  description = "Initial storage in GiB."
  default     = 50
}

variable "max_allocated_storage_gb" {
  type        = number
  description = "Upper bound for storage autoscaling in GiB."
  default     = 500
}

variable "database_name" {
  type        = string
  description = "Name of the database Prefect's server uses."
  default     = "prefect"
}

variable "master_username" {
  type        = string
  description = "Administrator user name. Its password is generated and kept by RDS in Secrets Manager, never in code or state."
  default     = "gantry_admin"
}

variable "multi_az" {
  type        = bool
  description = "Keep a synchronous standby in another zone. Required in production."
  default     = true

  validation {
    condition     = var.environment != "production" || var.multi_az
    error_message = "A production database is multi-AZ."
  }
}

variable "deletion_protection" {
  type        = bool
  description = "Refuse deletion of the instance. Required in production."
  default     = true

  validation {
    condition     = var.environment != "production" || var.deletion_protection
    error_message = "A production database has deletion protection."
  }
}

variable "backup_retention_days" {
  type        = number
  description = "Days of automated backups (point-in-time recovery window)."
  default     = 14

  validation {
    condition     = var.backup_retention_days >= 7 && var.backup_retention_days <= 35
    error_message = "Automated backups are kept between 7 and 35 days."
  }
}

variable "backup_window" {
  type        = string
  description = "Daily UTC window for automated backups."
  default     = "02:00-03:00"
}

variable "maintenance_window" {
  type        = string
  description = "Weekly UTC window for maintenance; must not overlap the backup window."
  default     = "sun:03:30-sun:04:30"
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
