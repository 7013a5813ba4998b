"""Files of the pipeline: triplets, features, object tables, run directories, manifests."""
