"""Human-readable run reports (HTML with plots)."""
