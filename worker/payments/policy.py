"""The optional AVS / CVV2 policy (docs/tokens.md): result codes that make an approved sale or auth be voided at once.

BluePay's bp10emu text has AVS_ALLOWED / CVV2_ALLOWED (deprecated there: "set these options for the account within
the account admin web interface"), declining at the gateway; merchants of other gateways configure the same rule on
their side. Ours is the merchant's side: ``AVS_POLICY`` / ``CVV2_POLICY`` list the codes (comma-separated, or run
together as AVS_ALLOWED writes them) that are not accepted; an approval showing one is voided at once and its record
says ``declined_by_policy``. The settings are read by worker.config.parse_codes. Pure: no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ChargePolicy"]

@dataclass(frozen=True)
class ChargePolicy:
    avs: frozenset[str] = frozenset()
    cvv2: frozenset[str] = frozenset()

    def refuses(self, avs: str, cvv2: str) -> str:
        """Why an approval with these results is not accepted ("" when it is)."""
        reasons = []
        if (avs or "").strip().upper() in self.avs:
            reasons.append(f"AVS {avs.strip().upper()}")
        if (cvv2 or "").strip().upper() in self.cvv2:
            reasons.append(f"CVV2 {cvv2.strip().upper()}")
        return ", ".join(reasons)
