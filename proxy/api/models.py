"""Request and response models of the payments API (field names after Twilio's Payments)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from proxy.securepay.states import PaymentStatus

FieldName = Literal["payment-card-number", "expiration-date", "security-code", "postal-code"]


class StartPayment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payment_method: Literal["credit-card"] = "credit-card"
    postal_code: bool = Field(False, description="Also capture a postal code (digits).")
    valid_card_types: list[str] | None = Field(None, description="e.g. visa, mastercard, amex")
    amount: str | None = Field(None, pattern=r"^\d+(\.\d{1,2})?$")
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")


class RequestedStatus(StrEnum):
    """What an agent may ask of a payment (Twilio's ``Status``): submit it or cancel it."""

    COMPLETE = PaymentStatus.COMPLETE.value
    CANCEL = "cancel"


class UpdatePayment(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    capture: FieldName | None = Field(None, alias="Capture")
    status: RequestedStatus | None = Field(None, alias="Status")


class Payment(BaseModel):
    sid: str
    call_id: str
    status: PaymentStatus
    current_field: str
    fields: dict[str, str]  # masked: "••••" / "•••• •••• •••• 1111"
    brand: str
    token: str
    last4: str
    error: str
    amount: str = ""  # as the agent started it (shown and audited; the gateway charges nothing)
    currency: str = ""


class Call(BaseModel):
    call_id: str
    agent_id: str
    payment_sid: str = Field("", description="The payment in progress on this call, if any.")
    last_payment_sid: str = Field(
        "", description="The call's latest payment, ended or not (its result and token stay "
                        "readable while the call lasts).")
    caller: str = Field("", description="Who the agent is talking to: ng metadata caller=, "
                                        "else the caller's address. Never card data.")
    started_at: datetime | None = Field(None, description="When the call appeared (UTC).")
    owner_down: bool = Field(
        False, description="The node that has this call is down (its heartbeat gone): the call "
                           "is listed from the shared store until that node is back, another "
                           "node adopts it, or its record is reaped; actions on it fail (502).")
    node: str = Field("", description="With owner_down: the node that had the call.")


class Assign(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_id: str = Field(min_length=1, max_length=64)
