"""The site device registry kept in the index: read by staff, changed by admins, every change audited."""

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError

from ...registry import RegistryError, parse_device
from ...store.reads import IndexSession
from ...store.records import DeviceRecord
from ..deps import AdminToken, SessionDep, StaffToken, audit
from ..schemas import DeviceChangeOut, DeviceIn, DeviceOut

router = APIRouter(tags=["devices"])
DeviceId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def device_out(device: DeviceRecord) -> dict:
    return {
        "id": device.id,
        "station_name": device.station_name,
        "ae_title": device.ae_title,
        "device_serial_number": device.device_serial_number,
        "manufacturer": device.manufacturer,
        "model": device.model,
        "role": device.role,
        "note": device.note,
        "valid_from": device.valid_from,
        "valid_to": device.valid_to,
        "created_at": device.created_at,
        "updated_at": device.updated_at,
    }


def validated(body: DeviceIn) -> dict:
    """The entry's values, checked by the registry's own rules and reported like any validation error."""
    values = body.model_dump(mode="python")
    try:
        parse_device({k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in values.items() if v is not None})
    except RegistryError as exc:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": str(exc).removeprefix("device: "), "type": "value_error"}]
        ) from None
    values["role"] = body.role.value
    return values


def existing_device(store: IndexSession, device_id: int) -> dict:
    device = store.access.get_device(device_id)
    if device is None:
        raise HTTPException(404, f"no device {device_id}")
    return device_out(device)


def affected_studies(store: IndexSession, values: dict) -> set[str]:
    return set(
        store.reader.studies_using_equipment(
            station_name=values.get("station_name"),
            device_serial_number=values.get("device_serial_number"),
            ae_title=values.get("ae_title"),
            manufacturer=values.get("manufacturer"),
            model=values.get("model"),
        )
    )


def change_response(store: IndexSession, device: DeviceRecord | None, before: dict | None, after: dict | None) -> dict:
    affected = sorted(affected_studies(store, before or {}) | affected_studies(store, after or {}))
    return {
        "device": device_out(device) if device else None,
        "affected_studies": affected,
        "reanalyze": "POST /studies/{uid}/reanalyze for each affected study",
    }


@router.get("/devices", response_model=list[DeviceOut], summary="The site device registry kept in the index")
def list_devices(request: Request, token: StaffToken, store: SessionDep) -> list[dict]:
    return [device_out(d) for d in store.access.devices()]


@router.post("/devices", response_model=DeviceChangeOut, status_code=201, summary="Add a registry entry")
def create_device(body: DeviceIn, request: Request, token: AdminToken, store: SessionDep) -> dict:
    values = validated(body)
    device = store.access.save_device(values, device_id=None, token_name=token.name)
    audit(
        store,
        request,
        token,
        "Security Alert",
        "C",
        detail={"device_id": device.id, "change": "registry entry created"},
    )
    return change_response(store, device, None, values)


@router.get("/devices/{device_id}", response_model=DeviceOut, summary="One registry entry")
def get_device(device_id: DeviceId, request: Request, token: StaffToken, store: SessionDep) -> dict:
    return existing_device(store, device_id)


@router.put("/devices/{device_id}", response_model=DeviceChangeOut, summary="Replace a registry entry")
def update_device(device_id: DeviceId, body: DeviceIn, request: Request, token: AdminToken, store: SessionDep) -> dict:
    before = existing_device(store, device_id)
    values = validated(body)
    device = store.access.save_device(values, device_id=device_id, token_name=token.name)
    audit(
        store,
        request,
        token,
        "Security Alert",
        "U",
        detail={"device_id": device_id, "change": "registry entry updated"},
    )
    return change_response(store, device, before, values)


@router.delete("/devices/{device_id}", response_model=DeviceChangeOut, summary="Remove a registry entry")
def delete_device(device_id: DeviceId, request: Request, token: AdminToken, store: SessionDep) -> dict:
    before = existing_device(store, device_id)
    store.access.delete_device(device_id, token_name=token.name)
    audit(
        store,
        request,
        token,
        "Security Alert",
        "D",
        detail={"device_id": device_id, "change": "registry entry deleted"},
    )
    return change_response(store, None, before, None)
