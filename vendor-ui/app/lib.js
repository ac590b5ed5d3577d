// Re-exports Preact, its hooks and htm from the vendored files so that every page imports one place.
import { h, render } from "/vendor/preact-10.25.4.js";
import { useState, useEffect, useRef, useCallback, useMemo } from "/vendor/preact-hooks-10.25.4.js";
import htm from "/vendor/htm-3.1.1.js";

export const html = htm.bind(h);
export { h, render, useState, useEffect, useRef, useCallback, useMemo };
