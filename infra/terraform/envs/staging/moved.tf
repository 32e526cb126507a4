# The components used to be called from this root directly; the moves keep their state
# (nothing is destroyed or recreated) now that modules/environment calls them. The first plan
# after the change lists each resource as "has moved" and nothing to add, change or destroy.
moved {
  from = module.network
  to   = module.environment.module.network
}

moved {
  from = module.cluster
  to   = module.environment.module.cluster
}

moved {
  from = module.database
  to   = module.environment.module.database
}

moved {
  from = module.registry
  to   = module.environment.module.registry
}

moved {
  from = module.prefect
  to   = module.environment.module.prefect
}

moved {
  from = module.monitoring
  to   = module.environment.module.monitoring
}
