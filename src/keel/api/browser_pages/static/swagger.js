// Starts Swagger UI on Keel's /docs page (no inline script: see keel/api/browser_pages/swagger.py).
"use strict";
(function () {
  const element = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: element.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    // Never ask the public validator service (it would send it the document).
    validatorUrl: null,
    // The key typed into Authorize lives in this page only, not in the browser's storage.
    persistAuthorization: false,
  });
})();
