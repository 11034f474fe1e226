"""The unified platform of the merged city's shared systems: read config, compose, export."""

from pathlib import Path

import pulumi

from components import compose
from components.settings import StackSettings
from cutover.estate import load_estate

here = Path(__file__).resolve().parent
stack = pulumi.get_stack()
settings = StackSettings.from_pulumi_config(source=f"stacks/Pulumi.{stack}.yaml")
estate = load_estate((here / settings.inventory) if settings.inventory else here.parent / "inventories" / stack)
settings.check_against(estate, source=f"stacks/Pulumi.{stack}.yaml")

for key, value in compose(settings, estate).items():
    pulumi.export(key, value)
