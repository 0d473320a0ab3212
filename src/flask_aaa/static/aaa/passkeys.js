// Passkeys (WebAuthn) for Flask-AAA's pages. Loaded as a file (the Content-Security-Policy
// allows no inline script); it wires every element marked data-aaa-passkey:
//   data-aaa-passkey="login"     a button: sign in with a passkey
//   data-aaa-passkey="mfa"       a button: a passkey as the second step of a sign-in
//   data-aaa-passkey="register"  a form: add a passkey (its "name" field names it)
// Each carries data-options and data-verify (the two URLs of its ceremony) and data-status
// (the id of the element that shows what happens). The server speaks JSON with
// base64url-encoded binary fields; the browser's API wants ArrayBuffers: we convert here.
(function () {
  "use strict";

  function toBase64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var text = "";
    for (var i = 0; i < bytes.length; i++) {
      text += String.fromCharCode(bytes[i]);
    }
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function fromBase64url(value) {
    var base64 = value.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) {
      base64 += "=";
    }
    var text = atob(base64);
    var bytes = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) {
      bytes[i] = text.charCodeAt(i);
    }
    return bytes.buffer;
  }

  function descriptors(list) {
    return (list || []).map(function (item) {
      var out = { type: item.type, id: fromBase64url(item.id) };
      if (item.transports) {
        out.transports = item.transports;
      }
      return out;
    });
  }

  function creationOptions(json) {
    var options = Object.assign({}, json);
    options.challenge = fromBase64url(json.challenge);
    options.user = Object.assign({}, json.user, { id: fromBase64url(json.user.id) });
    options.excludeCredentials = descriptors(json.excludeCredentials);
    return options;
  }

  function requestOptions(json) {
    var options = Object.assign({}, json);
    options.challenge = fromBase64url(json.challenge);
    options.allowCredentials = descriptors(json.allowCredentials);
    return options;
  }

  function createdJSON(credential) {
    var response = credential.response;
    return {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || null,
      response: {
        clientDataJSON: toBase64url(response.clientDataJSON),
        attestationObject: toBase64url(response.attestationObject),
        transports: typeof response.getTransports === "function" ? response.getTransports() : []
      }
    };
  }

  function assertedJSON(credential) {
    var response = credential.response;
    return {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || null,
      response: {
        clientDataJSON: toBase64url(response.clientDataJSON),
        authenticatorData: toBase64url(response.authenticatorData),
        signature: toBase64url(response.signature),
        userHandle: response.userHandle ? toBase64url(response.userHandle) : null
      }
    };
  }

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "X-CSRFToken": csrfToken()
      },
      body: JSON.stringify(body || {})
    }).then(function (response) {
      return response.json().catch(function () {
        return {};
      }).then(function (data) {
        if (!response.ok) {
          var error = new Error(data.message || "The server refused the passkey.");
          error.code = data.error;
          throw error;
        }
        return data;
      });
    });
  }

  function say(element, text, isError) {
    var target = document.getElementById(element.getAttribute("data-status") || "");
    if (!target) {
      return;
    }
    target.textContent = text;
    target.className = isError ? "aaa-error" : "aaa-hint";
  }

  function explain(error) {
    if (error && (error.name === "NotAllowedError" || error.name === "AbortError")) {
      return "The passkey request was cancelled or timed out.";
    }
    if (error && error.name === "InvalidStateError") {
      return "This authenticator already holds a passkey for your account.";
    }
    if (error && error.name === "SecurityError") {
      return "Passkeys do not work at this address. Open the site at its usual address.";
    }
    return (error && error.message) || "Something went wrong. Please try again.";
  }

  function signIn(element, extra) {
    say(element, "Waiting for your passkey…", false);
    return post(element.getAttribute("data-options"), {})
      .then(function (data) {
        return navigator.credentials.get({ publicKey: requestOptions(data.publicKey) });
      })
      .then(function (credential) {
        if (!credential) {
          throw new Error("No passkey was chosen.");
        }
        var body = Object.assign({ credential: assertedJSON(credential) }, extra || {});
        return post(element.getAttribute("data-verify"), body);
      })
      .then(function (data) {
        say(element, "Signed in.", false);
        window.location.assign(data.redirect || "/");
      });
  }

  function register(form) {
    var nameField = form.querySelector('input[name="name"]');
    say(form, "Follow your browser's prompt to create the passkey…", false);
    return post(form.getAttribute("data-options"), {})
      .then(function (data) {
        return navigator.credentials.create({ publicKey: creationOptions(data.publicKey) });
      })
      .then(function (credential) {
        if (!credential) {
          throw new Error("No passkey was created.");
        }
        return post(form.getAttribute("data-verify"), {
          credential: createdJSON(credential),
          name: nameField ? nameField.value : ""
        });
      })
      .then(function () {
        window.location.reload();
      });
  }

  function failed(element) {
    return function (error) {
      if (error && error.code === "reauthentication_required" && element.getAttribute("data-reauth")) {
        window.location.assign(element.getAttribute("data-reauth"));
        return;
      }
      say(element, explain(error), true);
    };
  }

  function wire(element) {
    var kind = element.getAttribute("data-aaa-passkey");
    var origin = element.getAttribute("data-origin");
    if (!window.PublicKeyCredential || !navigator.credentials) {
      say(element, "This browser does not support passkeys.", true);
      return;
    }
    if (origin && origin !== window.location.origin) {
      say(element, "Passkeys work only at " + origin + ".", true);
      return;
    }
    element.hidden = false;
    if (kind === "register") {
      element.addEventListener("submit", function (event) {
        event.preventDefault();
        register(element).catch(failed(element));
      });
      return;
    }
    element.addEventListener("click", function () {
      var extra = {};
      if (kind === "login") {
        var remember = document.querySelector('input[name="remember"]');
        var next = element.getAttribute("data-next");
        extra.remember = Boolean(remember && remember.checked);
        if (next) {
          extra.next = next;
        }
      }
      element.disabled = true;
      signIn(element, extra).catch(failed(element)).then(function () {
        element.disabled = false;
      });
    });
  }

  function start() {
    var elements = document.querySelectorAll("[data-aaa-passkey]");
    for (var i = 0; i < elements.length; i++) {
      wire(elements[i]);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
