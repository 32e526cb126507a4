mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:eu-west-1:123456789012:key/mock" }
  }
}

variables {
  repositories = ["gantry", "platform/api"]
}

run "repositories_have_immutable_tags_and_scan_on_push" {
  command = plan

  assert {
    condition     = alltrue([for repository in aws_ecr_repository.this : repository.image_tag_mutability == "IMMUTABLE"])
    error_message = "Tags are immutable."
  }

  assert {
    condition     = alltrue([for repository in aws_ecr_repository.this : repository.image_scanning_configuration[0].scan_on_push])
    error_message = "Every push is scanned."
  }

  assert {
    condition     = length(aws_ecr_repository_policy.pull) == 0
    error_message = "No cross-account pull policy unless principals are given."
  }
}

run "uppercase_repository_name_is_refused" {
  command = plan

  variables {
    repositories = ["Gantry"]
  }

  expect_failures = [var.repositories]
}
