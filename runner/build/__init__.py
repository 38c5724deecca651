"""Building images: the workload image's context and build chain (Cloud Build, then local Docker),
and the runner's own image for the hosted supervisor."""
