"""Steps 3-5: the build plan, its rendered context, the BuildKit build (and the AutoDL image and bundle)."""
