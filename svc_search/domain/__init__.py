"""Search policy: query shape, postings, result pages; pure where it can be."""
