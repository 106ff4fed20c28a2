"""The overview page's static files (served by meterline.aggregator.routes.overview);
uPlot 1.6.32 vendored from the npm registry, MIT (uPlot.LICENSE)."""
