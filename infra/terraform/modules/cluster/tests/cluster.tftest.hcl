mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_region" {
    defaults = { name = "eu-west-1" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_resource "aws_eks_cluster" {
    defaults = {
      identity = [{ oidc = [{ issuer = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE" }] }]
    }
  }
  mock_resource "aws_iam_openid_connect_provider" {
    defaults = { arn = "arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:eu-west-1:123456789012:key/mock" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
}

variables {
  name               = "gantry-test"
  vpc_id             = "vpc-123"
  private_subnet_ids = ["subnet-a", "subnet-b", "subnet-c"]
  node_groups = {
    general = { instance_types = ["m6i.large"], min_size = 2, max_size = 6, desired_size = 3 }
  }
}

run "api_endpoint_is_private_and_secrets_are_encrypted" {
  command = plan

  assert {
    condition     = aws_eks_cluster.this.vpc_config[0].endpoint_public_access == false
    error_message = "Without allowed CIDRs the API endpoint stays private."
  }

  assert {
    condition     = aws_eks_cluster.this.encryption_config[0].resources == toset(["secrets"])
    error_message = "Kubernetes secrets are encrypted with the cluster's KMS key."
  }
}

run "node_groups_are_tagged_for_autoscaler_discovery" {
  command = plan

  assert {
    condition     = aws_eks_node_group.this["general"].tags["k8s.io/cluster-autoscaler/gantry-test"] == "owned"
    error_message = "The autoscaler discovers node groups by their owner tag."
  }

  assert {
    condition     = aws_eks_node_group.this["general"].scaling_config[0].max_size == 6
    error_message = "The node group keeps its scaling bounds."
  }

  assert {
    condition     = contains(output.autoscaler_args, "--node-group-auto-discovery=asg:tag=k8s.io/cluster-autoscaler/enabled,k8s.io/cluster-autoscaler/gantry-test")
    error_message = "The autoscaler flags name this cluster's discovery tags."
  }
}

run "desired_size_outside_bounds_is_refused" {
  command = plan

  variables {
    node_groups = {
      general = { instance_types = ["m6i.large"], min_size = 3, max_size = 6, desired_size = 1 }
    }
  }

  expect_failures = [var.node_groups]
}
