variable "repositories" {
  type        = set(string)
  description = "Names of the ECR repositories to create, e.g. [\"gantry\", \"platform/api\"]."

  validation {
    condition     = alltrue([for name in var.repositories : can(regex("^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$", name))])
    error_message = "Repository names are lowercase ECR names (letters, digits, . _ - and /)."
  }
}

variable "untagged_expiry_days" {
  type        = number
  description = "Untagged images older than this are expired; tagged images (every release) are kept."
  default     = 14
}

variable "pull_principal_arns" {
  type        = list(string)
  description = "IAM principals (e.g. the other environment's node role) that may pull from these repositories."
  default     = []
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
