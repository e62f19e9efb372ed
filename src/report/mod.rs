//! Reports and plots (plotters, PNG and SVG) with HTML and Markdown pages.
