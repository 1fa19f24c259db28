"""The aging study: how structure volume and attenuation change with age (README "Aging study")."""
