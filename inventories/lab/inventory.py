#!/usr/bin/env python3
"""Ansible dynamic inventory of this estate: `ansible-inventory -i inventory.py --graph`."""
import pathlib, sys; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from cutover.ansible_inventory import script_main
script_main(pathlib.Path(__file__).resolve().parent)
