// The panel's translations: English strings are the keys, Simplified Chinese is looked up in a table; the choice follows navigator.language and is remembered.
import { chineseStrings } from "./i18n-zh.js";

const LANGUAGE_STORAGE_KEY = "octopus.language";
let currentLanguage = localStorage.getItem(LANGUAGE_STORAGE_KEY) || ((navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en");
document.documentElement.lang = currentLanguage === "zh" ? "zh-CN" : "en";

export function language() { return currentLanguage; }
export function setLanguage(next) {
  currentLanguage = next;
  localStorage.setItem(LANGUAGE_STORAGE_KEY, next);
  document.documentElement.lang = next === "zh" ? "zh-CN" : "en";
}

/** Translates an English string; `{name}` placeholders are filled from `values`. A missing translation falls back to English. */
export function t(text, values) {
  let translated = currentLanguage === "zh" ? chineseStrings[text] || text : text;
  if (values) for (const [name, value] of Object.entries(values)) translated = translated.replaceAll(`{${name}}`, value);
  return translated;
}
