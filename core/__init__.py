"""What the API, the seeder and the local stack share: the data contract (core.contract) and
the settings (core.settings). It imports nothing from api, seeder or stack."""
