"""Post-training pruning: calibration data (`data`), streamed statistics (`statistics`),
calibrated criteria (`criteria`), and closed-form compensation (`compensation`, with
`patches` for convolutions)."""
